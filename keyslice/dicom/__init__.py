"""Step 2: DICOM header indexing and phase-aware series selection.

Entry points (the pipeline calls exactly these):

* :func:`index_study` - headers only, one thread (parsing holds the GIL) -> :class:`StudyIndex`
* :func:`assign_series` - one series per finding -> assignments rows
* :func:`infer_phase` - contrast phase of one series from its header fields -> :class:`PhaseCall`
"""

from keyslice.dicom.assign import assign_series, kernel_family, normalise_phase_hint
from keyslice.dicom.headers import Header, NotDicomError, read_header
from keyslice.dicom.index import SeriesRecord, StudyIndex, index_study
from keyslice.dicom.phase import PhaseCall, infer_phase, totalsegmentator_phase

__all__ = [
    "Header", "NotDicomError", "PhaseCall", "SeriesRecord", "StudyIndex", "assign_series", "index_study",
    "infer_phase", "kernel_family", "normalise_phase_hint", "read_header", "totalsegmentator_phase",
]
