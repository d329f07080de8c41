"""Error types shared by the steps.

The build distinguishes bad input (recorded against the study, not retried) from
transient trouble (retried by Prefect, then recorded). Each step raises the most
specific class with a message that says what is wrong and what to do next.
"""

from __future__ import annotations


class KeysliceError(Exception):
    """Base class of keyslice's own errors."""


class InputError(KeysliceError):
    """The study's input is unusable (corrupt DICOM, empty report...). Retrying will not help."""


class EmptyReportError(InputError):
    """The report is missing, empty or whitespace only."""


class UnsupportedLanguageError(InputError):
    """The report is not in a language the rule-based segmenter supports."""


class DicomReadError(InputError):
    """A DICOM file or series cannot be read or decoded."""


class NoUsableSeriesError(InputError):
    """No series of the study survived filtering (localizers only, non-axial only...)."""


class LimitExceededError(InputError):
    """The input is larger than a documented build limit (report size, findings, slices, files)."""


class MaskError(InputError):
    """An organ mask cannot be read or does not fit the series' geometry."""


class ModelWeightsMissingError(KeysliceError):
    """Pretrained weights are not on disk and cannot be downloaded (offline)."""


class TransientError(KeysliceError):
    """A failure worth retrying (endpoint timeout, rate limit, out of GPU memory)."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same work may succeed."""
    if isinstance(exc, InputError):
        return False
    if isinstance(exc, (TransientError, TimeoutError, ConnectionError)):
        return True
    try:  # optional imports: only classify what is installed
        import openai

        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
            return True
    except ImportError:
        pass
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return False
