"""Prefect flows of keyslice: the corpus build (and, later, its deployments)."""
