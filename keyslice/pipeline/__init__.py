"""The corpus build, without an orchestrator.

:mod:`.registry` declares the stages once; :mod:`.stage_functions` holds what each stage
does for one study; :mod:`.run` runs a stage with checkpoint semantics; :mod:`.api`
builds a whole corpus on a runner (sequential, threads, or one that ``flows/`` supplies
for Prefect and Dask).
"""
