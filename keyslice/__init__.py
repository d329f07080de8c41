"""keyslice: turn CT studies and their radiology reports into a Medical VQA dataset.

The domain library. Nothing in this package imports Prefect: the Prefect tasks in
``tasks/`` and flows in ``flows/`` are thin wrappers around the functions here, so
every step can be used and tested on its own.
"""

__version__ = "0.1.0"
