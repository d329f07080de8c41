"""``keyslice segment``: organ masks for the studies that shipped none, where the next build finds them.

Where the masks go: a **masks root** beside the input, never the input itself. Hospital input
folders are often read-only exports (a PACS dump, a mounted share) and must not change under a
build; so the labelmap of the study at ``INPUT/<folder>`` is written to ``MASKS/<folder>/``
(:meth:`~keyslice.pipeline.studies.Study.masks_folder`), and a build given the same root
(``keyslice build --masks MASKS``, ``masks_dir`` in the build config) reads it after the study's own
masks (:func:`keyslice.selector.find_masks`). The root mirrors the input's folder names, so it is as
private as the input (folder names can be patient names) and needs no pseudonym key. Giving the
input itself as the root (``--masks INPUT``) writes into the study folders, for those who want that.

Which series: the one step 2 would read most of the study's findings on. The report is segmented
as in step 1 (rules, or the build config's segmenter) and :func:`keyslice.dicom.assign_series`
assigns each finding a series; the series assigned most often wins (ties: the first assigned).
A report without findings gets the default preference (portal venous, soft-tissue kernel, 1-5 mm).
One labelmap per study: masks are matched to every series by world coordinates, so a series of the
same frame of reference uses them too.

A study is skipped when its own folder or its masks folder already holds masks (``overwrite``:
segment it again, replacing what this command wrote). A study that cannot be segmented (no weights,
no usable series, unreadable DICOM) gets its error and the others go on.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from keyslice.config import BuildConfig
from keyslice.pseudonym import Pseudonymizer

if TYPE_CHECKING:
    from keyslice.selector.totalseg import Segmenter


@dataclass(frozen=True)
class SegmentOutcome:
    """What ``keyslice segment`` did with one study. ``folder`` is the study's relative input folder
    (shown on this terminal only: it is never stored)."""

    folder: str
    status: str                    # "segmented", "skipped" or "failed"
    detail: str                    # the series and why, what masks it already has, or the error
    labelmap: Path | None = None


def choose_series(study, pseudonymize: Callable[[str, str], str], config: BuildConfig) -> tuple[list[Path], str]:
    """The files of the series step 2 would read most of the study's findings on, and why (in words)."""
    from keyslice.dicom import assign_series, index_study
    from keyslice.pipeline.stage_functions import finding_row
    from keyslice.report import report_config_for_build, segment_report

    index = index_study(study.path, pseudonymize, max_files=config.max_files_per_study)
    text = study.read_report(config.max_report_bytes)
    findings = [finding_row(f, study.study_id)
                for f in segment_report(text, report_config_for_build(config.segmenter, config.llm))]
    findings = [f for f in findings if f.get("status") != "non_finding"]
    assignments = assign_series(findings or [{"finding_id": "default", "status": "abnormal"}],
                                [rec.row for rec in index.series])
    votes = Counter(a["series_id"] for a in assignments)
    chosen = votes.most_common(1)[0][0]  # equal counts keep their order: the first assigned wins
    record = next(rec for rec in index.series if rec.row["series_id"] == chosen)
    reason = next(a["reason"] for a in assignments if a["series_id"] == chosen)
    why = (f"{votes[chosen]} of {len(findings)} finding(s)" if findings else "no findings: default preference")
    return record.files, f"{why}; {reason}"


def segment_studies(input_dir: Path, masks_dir: Path, segmenter: "Segmenter", *, config: BuildConfig | None = None,
                    overwrite: bool = False, progress: Callable[[SegmentOutcome], None] | None = None,
                    check: Callable[[], None] | None = None) -> list[SegmentOutcome]:
    """Segment every study of ``input_dir`` without masks into ``masks_dir`` (see the module docstring).

    ``segmenter``: :func:`keyslice.selector.totalsegmentator_segmenter` or any callable of that shape.
    ``config``: the build config whose report segmenter and limits apply (default: the defaults).
    ``progress`` is called with each study's outcome as soon as it is known. ``check`` runs before each
    study that needs masks is read: its exception fails that study without decoding any pixels (the real
    runner passes :func:`keyslice.selector.totalseg.check_totalsegmentator`, so a machine without weights
    learns it in seconds per study, not after each CT is decoded)."""
    from keyslice.pipeline.studies import discover_studies
    from keyslice.selector import find_masks, load_volume, segment_volume
    from keyslice.selector.totalseg import LABELMAP_NAME

    config = config or BuildConfig(input_dir=Path(input_dir), out_dir=Path(masks_dir))
    # series ids are needed only within this call and never stored: a throwaway key
    pseudonymize = Pseudonymizer(secrets.token_bytes(32), "generated")
    outcomes = []
    for study in sorted(discover_studies(Path(input_dir), pseudonymize, config.manifest), key=lambda s: s.source_key):
        folder = study.masks_folder(masks_dir)
        try:
            existing = find_masks(study.path, folder)
            if existing is not None and not overwrite:
                names = sorted(existing.labels())
                outcome = SegmentOutcome(study.source_key, "skipped", f"has masks ({len(names)} labels: "
                                         f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
            else:
                if check is not None:
                    check()
                files, why = choose_series(study, pseudonymize, config)
                masks = segment_volume(load_volume(files), folder, segmenter)
                outcome = SegmentOutcome(study.source_key, "segmented", f"{len(masks.labels())} labels on {why}",
                                         folder / LABELMAP_NAME)
        except Exception as exc:  # this study's error (weights, input, the segmenter itself); the others go on
            outcome = SegmentOutcome(study.source_key, "failed", f"{type(exc).__name__}: {exc}")
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes
