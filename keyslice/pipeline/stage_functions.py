"""What each stage does for one study: (study, context) -> rows per table.

Each function reads what earlier stages checkpointed, calls the domain code of its
step, and returns complete rows (``study_id`` and ``created_at`` added here, once).
Skipping done work, retrying and recording a failed stage are :mod:`keyslice.pipeline.run`'s;
a function records only partial problems that do not fail its stage (unreadable slices,
rejected LLM answers) in ``failures``. Stages are declared in :mod:`keyslice.pipeline.registry`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from keyslice.corpus.schemas import utcnow
from keyslice.errors import DicomReadError, LimitExceededError

if TYPE_CHECKING:
    from keyslice.pipeline.context import BuildContext
    from keyslice.pipeline.studies import Study

Rows = list[dict[str, Any]]

def _stamp(rows: Rows, study_id: str) -> Rows:
    now = utcnow()
    return [{**row, "study_id": study_id, "created_at": now} for row in rows]


def segment_step(study: Study, ctx: BuildContext) -> dict[str, Rows]:
    """Step 1: report text -> finding sentences tagged with organ, status, laterality, phase."""
    from keyslice.deid import DEID_VERSION, KIND_TOKENS
    from keyslice.report import report_config_for_build, segment_report
    from keyslice.report.reading import check_language_like

    cfg = ctx.config
    report = study.read_report_deid(cfg.max_report_bytes)  # de-identified as it is read: the raw text goes no further
    check_language_like(report.text)
    masked = {kind: int(report.counts.get(kind, 0)) for kind in KIND_TOKENS}
    findings = segment_report(report.text, report_config_for_build(cfg.segmenter, cfg.llm))
    if len(findings) > cfg.max_findings_per_report:
        raise LimitExceededError(f"the report gives {len(findings)} finding sentences, more than "
                                 f"{cfg.max_findings_per_report} (max_findings_per_report); check the report, or "
                                 "raise the limit in the build config")
    rows = []
    for f in findings:
        row = finding_row(f, study.study_id)
        row["deid_version"] = DEID_VERSION
        row["report_phi_masked"] = masked
        rows.append(row)
    return {"findings": _stamp(rows, study.study_id)}


def finding_row(finding, study_id: str) -> dict[str, Any]:
    """A report finding as step 2 reads it from the findings table: its row, id and first organ."""
    row = finding.to_row()
    row["finding_id"] = f"{study_id}:{finding.finding_index}"
    row["organ"] = finding.organs[0] if finding.organs else None
    return row


def series_step(study: Study, ctx: BuildContext) -> dict[str, Rows]:
    """Step 2: DICOM headers -> series table (kept or dropped, phase) and a series per finding."""
    from keyslice.dicom import assign_series, index_study

    index = index_study(study.path, ctx.pseudonymize, max_files=ctx.config.max_files_per_study)
    too_long = [rec.row["series_id"] for rec in index.kept() if len(rec.files) > ctx.config.max_slices_per_series]
    if too_long:
        raise LimitExceededError(f"series {', '.join(too_long)} hold(s) more than {ctx.config.max_slices_per_series} "
                                 "slices (max_slices_per_series); raise the limit in the build config if they are real")
    unread = _unread_summary(index.skipped_files)
    if unread:  # the stage goes on with the files it could read; say which kinds it could not
        ctx.store.record_failure(study.study_id, "series-files", DicomReadError(unread), 1, ctx.run_id)
    series_rows = _stamp([rec.row for rec in index.series], study.study_id)
    findings = ctx.store.read_rows("findings", study.study_id)
    assignments = assign_series(findings, series_rows) if findings else []
    study_row = {
        "patient_id": ctx.pseudonymize("patient", index.patient_key) if index.patient_key else None,
        "report_chars": len(study.read_report(ctx.config.max_report_bytes)),
        "n_files": index.n_files,
        "n_dicom": index.n_dicom,
        "n_series": len(index.series),
        "n_series_kept": len(index.kept()),
        "modalities": sorted(index.modalities),
        "run_id": ctx.run_id,
    }
    return {
        "studies": _stamp([study_row], study.study_id),
        "series": series_rows,
        "assignments": _stamp(assignments, study.study_id),
    }


#: reasons of :attr:`StudyIndex.skipped_files` that point at a broken input (not a mixed-in non-DICOM file)
_UNREAD_REASONS = ("unreadable file", "not a regular file", "folder reached again")


def _unread_summary(skipped: list[tuple[str, str]]) -> str | None:
    """Files a study holds but the index could not read, as counts per reason (names may be PHI)."""
    from collections import Counter

    reasons = Counter(reason.split(" (")[0].split(";")[0] for _, reason in skipped
                      if reason.startswith(_UNREAD_REASONS))
    if not reasons:
        return None
    return (f"{sum(reasons.values())} file(s) or folder(s) of the study not read: "
            + ", ".join(f"{n} x {r}" for r, n in sorted(reasons.items())))


def keyslice_step(study: Study, ctx: BuildContext) -> dict[str, Rows]:
    """Step 3: per assigned series, decode and encode it once, then pick each finding's key slice."""
    from keyslice.dicom import index_study
    from keyslice.pipeline.registry import resource_lock
    from keyslice.selector import (EmbeddingCache, Query, SelectorConfig, find_masks, load_model,
                                   load_volume, plot_similarity_curve, render_png, select_key_slices)
    from keyslice.selector.spatial import SpatialConfig

    cfg = ctx.config
    sid = study.study_id
    assignments = ctx.store.read_rows("assignments", sid)
    if not assignments:
        return {"selections": []}
    findings = {f["finding_id"]: f for f in ctx.store.read_rows("findings", sid)}
    by_series: dict[str, list[dict]] = defaultdict(list)
    for a in assignments:
        by_series[a["series_id"]].append(a)

    encoder = load_model(cfg.model, device=cfg.device, precision=cfg.precision)
    masks = find_masks(study.path, *study.mask_folders(cfg.masks_dir)) if cfg.use_masks else None
    # the study's series again (paths are never checkpointed); their headers are read once, here
    index = index_study(study.path, ctx.pseudonymize, image_phase=False, max_files=cfg.max_files_per_study)
    files = index.series_files()
    selector_cfg = SelectorConfig(top_k=cfg.top_k, window=cfg.window, restrict_to_organ=cfg.use_masks,
                                  uncertain_margin=cfg.uncertain_margin,
                                  confidence_tolerance_mm=cfg.confidence_tolerance_mm,
                                  spatial=SpatialConfig(enabled=cfg.spatial_normalise))
    cache = EmbeddingCache(ctx.cache_dir / "embeddings")
    rows: Rows = []
    missing = sorted(set(by_series) - set(files))
    if missing:
        raise DicomReadError(f"series {', '.join(missing)} assigned in step 2 no longer found in study {sid}; "
                             f"the folder changed (or the pseudonym key did): rerun with --force-stage series")
    for series_id, items in sorted(by_series.items()):
        volume = load_volume(files[series_id], headers=index.headers)
        queries = [Query(a["finding_id"], findings[a["finding_id"]]["text"],
                         list(findings[a["finding_id"]]["organs"]), list(findings[a["finding_id"]]["ts_labels"]))
                   for a in items]
        with resource_lock("gpu"):  # one encoder per process, shared by its studies' threads
            choices = select_key_slices(volume, queries, encoder, selector_cfg, masks=masks, cache=cache,
                                        cache_key=f"{sid}/{series_id}")
        if volume.skipped:
            ctx.store.record_failure(sid, "keyslice-slices", DicomReadError(_skipped_summary(series_id, volume)), 1,
                                     ctx.run_id)
        for choice in choices:
            index = findings[choice.finding_id]["finding_index"]
            image = ctx.store.write_image(sid, f"{index:04d}.png", render_png(volume, choice.top1_index, choice.window))
            if cfg.save_curves:  # on request: the similarity curve along z beside the key slice
                ctx.store.write_image(sid, f"{index:04d}_curve.png", plot_similarity_curve(choice, volume))
            rows.append({**choice.record(), "series_id": series_id, "image_path": image})
    return {"selections": _stamp(rows, sid)}


def _skipped_summary(series_id: str, volume) -> str:
    """What the selector left out of a series (keyslice.selector.volume's bad-input policy: a bad
    file is dropped, a slice whose pixels cannot be decoded is kept blank and never selected),
    as reasons and slice indices only: file names may be raw UIDs and never enter the corpus."""
    import re
    from collections import Counter

    reasons = Counter(re.split(r" \(|:", reason, maxsplit=1)[0] for _, reason in volume.skipped)
    blank = [int(k) for k, ok in enumerate(volume.valid) if not ok]
    return (f"series {series_id}: {len(volume.skipped)} file(s) not used as read "
            f"({', '.join(f'{n} x {r}' for r, n in sorted(reasons.items()))}); "
            f"blank slices, never selected: {blank or 'none'}")


def vqa_step(study: Study, ctx: BuildContext) -> dict[str, Rows]:
    """Step 4: findings + key slices -> question-answer pairs, by rules and optionally by an LLM."""
    from keyslice.vqa import generate_rule_vqa

    sid = study.study_id
    findings = ctx.store.read_rows("findings", sid)
    selections = ctx.store.read_rows("selections", sid)
    series = ctx.store.read_rows("series", sid)
    mask_organs = None
    if ctx.config.vqa_mask_negatives:  # opt-in: "no" for mask-visible organs the report never mentions
        from keyslice.vqa.masks import study_mask_organs

        mask_organs = study_mask_organs(study.path, selections, ctx.pseudonymize,
                                        study.mask_folders(ctx.config.masks_dir))
    rows = generate_rule_vqa(findings, selections, series, mask_organs=mask_organs)
    if ctx.config.llm.enabled:
        from keyslice.vqa import LLMGenerator

        generator = LLMGenerator(ctx.config.llm, prompt_version=ctx.config.vqa_prompt_version,
                                 cache_dir=ctx.cache_dir / "llm")
        llm_rows, failures = generator.generate(findings, selections)
        rows.extend(llm_rows)
        for failure in failures:
            ctx.store.record_failure(sid, "vqa-llm", failure.as_exception(), 1, ctx.run_id)
    return {"vqa": _stamp(rows, sid)}
