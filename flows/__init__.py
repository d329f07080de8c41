"""Prefect flows of keyslice: the corpus build (``build``), its scheduled and CPU/GPU-split
deployments (``deploy``) and fine-tuning (``finetune``), all thin runners over :mod:`keyslice`."""
