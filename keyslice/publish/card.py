"""The dataset card (``README.md``): YAML metadata the Hub and ``datasets`` read, and how the data was built.

The card is a pure function of the exported rows and the corpus state (no dates, no local
paths), so an unchanged corpus gives a byte-identical card and nothing to upload. Every value
it quotes (model ids, prompt versions, counts) comes from columns the privacy gate checked.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import yaml

from keyslice import __version__
from keyslice.publish.dataset_builder import (CONFIGS, NEAR_DUPLICATE_SLICES, SPLITS, ExportPlan, ShardFile,
                                              features)
from keyslice.publish.privacy import RULES_VERSION
from keyslice.publish.stats import PLOTS, STATS_DIR, ExportStats, stats_tables

PHASE_RULES = """\
Each series' contrast phase comes from its DICOM headers only (`keyslice/dicom/phase.py`):
1. timing, when ContrastBolusStartTime and the acquisition time are present: < 25 s arterial_early,
   25-45 s arterial_late, 55-90 s portal_venous (weaker up to 150 s), >= 150 s delayed, a scan before
   the injection non_contrast;
2. phase words in SeriesDescription (several languages and common abbreviations), then in ProtocolName
   at a lower weight;
3. ContrastBolusAgent/Route (an agent means contrast was given; oral-only is not IV contrast).
On conflict timing wins, then the series-specific description over the agent tag, with lowered
confidence; with all headers silent the phase is `unknown` (or TotalSegmentator's image-based
estimate when installed). A finding is read on the series whose phase matches the phase its
sentence asks for (`findings.phase_hint`), else on the best kept series of the study."""

DESCRIPTIONS = {
    "vqa": "question-answer pairs about a key slice (closed, open and multiple-choice)",
    "findings": "report finding sentences paired with their key slice (sentence-slice pairs)",
    "selections": "the key-slice choice per finding: series, phase, window, selector model and scores",
}


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def _counts(counts: Mapping[str, int] | None) -> str:
    return ", ".join(f"{n} {name.replace(':', ' on ').replace('_', ' ')}" for name, n in counts.items()) if counts \
        else "none"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _stats_section(stats: ExportStats) -> list[str]:
    """The plots (PNG files of the repository's ``stats/`` folder) each followed by its numbers."""
    lines = ["## Statistics", "",
             "Counts over the exported rows (after exclusions, the confidence filter and de-duplication). "
             "The position of a key slice is its index in the position-sorted series over the series' length "
             "(0 = lowest z, 1 = highest; DICOM z increases towards the head). `keyslice stats --out CORPUS` "
             "prints and draws the same from a corpus.", ""]
    tables = stats_tables(stats)
    for name, title in PLOTS.items():
        header, rows = tables[title]
        lines += [f"### {title[0].upper()}{title[1:]}", "", f"![{title}]({STATS_DIR}/{name})", "",
                  _table(header, rows), ""]
    return lines


def _release_section(repo_id: str, release: str | None, changes: Mapping[str, Any] | None) -> list[str]:
    if release is None and changes is None:
        return []
    lines = ["## Releases", ""]
    if release is not None:
        lines += [f"This is release `{release}`, a Hub tag that is never moved: "
                  f'`load_dataset("{repo_id}", "vqa", revision="{release}")` always returns these rows.', ""]
    if changes is None:
        lines += ["There is no earlier release.", ""]
        return lines
    lines += [f"Changes since release `{changes['previous_tag']}`: {changes['studies_added']} studies added, "
              f"{changes['studies_removed']} removed.", "",
              _table(["config", f"rows in {changes['previous_tag']}", "rows now", "change"],
                     [(c, before, now, f"{now - before:+d}") for c, (before, now) in changes["rows"].items()]), ""]
    return lines


def card_metadata(plan: ExportPlan, shards: Sequence[ShardFile], *, license: str) -> dict[str, Any]:
    """The YAML header: license, task, configs with their data files, features and split sizes."""
    by_config: dict[str, dict[str, list[ShardFile]]] = defaultdict(lambda: defaultdict(list))
    for shard in shards:
        by_config[shard.config][shard.split].append(shard)
    languages = sorted({r.fields.get("language") for r in plan.rows["findings"] if r.fields.get("language")})
    configs, infos = [], []
    for config in CONFIGS:
        splits = [s for s in SPLITS if by_config[config].get(s)]
        if not splits:
            continue
        entry: dict[str, Any] = {"config_name": config,
                                 "data_files": [{"split": s, "path": f"{config}/{s}-*"} for s in splits]}
        if config == "vqa":
            entry["default"] = True
        configs.append(entry)
        split_infos = [{"name": s, "num_bytes": sum(x.nbytes for x in by_config[config][s]),
                        "num_examples": sum(x.rows for x in by_config[config][s])} for s in splits]
        infos.append({"config_name": config, "features": features(config, bool(plan.context_slices or plan.context_topk), plan.grounding,
                                                                 bool(plan.stack_slices))._to_yaml_list(),
                      "splits": split_infos,
                      "download_size": sum(x.size for s in splits for x in by_config[config][s]),
                      "dataset_size": sum(i["num_bytes"] for i in split_infos)})
    return {
        "license": license,
        "task_categories": ["visual-question-answering"],
        "language": languages or ["en"],
        "tags": ["medical", "radiology", "ct", "keyslice"],
        "size_categories": [_size_category(len(plan.rows["vqa"]))],
        "configs": configs,
        "dataset_info": infos,
    }


def _stack_section(plan: ExportPlan) -> list[str]:
    """What the fixed-length stacks are: N, the range rule, the interpolation, the window, the masks."""
    from keyslice.publish.stack import KEY_HALF_RANGE_MM, ORGAN_MARGIN_MM

    rows = plan.rows["findings"]
    rules = Counter(r.fields.get("stack_range") for r in rows)
    windows = Counter(f"{r.fields['stack_window']} (centre {r.fields['stack_window_center']:g} HU, width "
                      f"{r.fields['stack_window_width']:g} HU)" for r in rows if "stack_window" in r.fields)
    spacing = [r.fields["stack_spacing_mm"] for r in rows if r.fields.get("stack_spacing_mm") is not None]
    return [
        "### Slice stacks", "",
        f"`findings` and `selections` rows carry `stack`: {plan.stack_slices} slices evenly spaced along z (the "
        "series' slice normal) in ascending z, with their positions in `stack_z_mm` and their spacing in "
        "`stack_spacing_mm`. The range (`stack_range`) is the finding's organ (`organ`: the z-range of its "
        f"organ mask the selector searched, from the study's TotalSegmentator / DICOM-SEG masks, widened by "
        f"{ORGAN_MARGIN_MM:g} mm on each side) or, without a mask, `key_slice`: +-{KEY_HALF_RANGE_MM:g} mm "
        "around the key slice; clipped to the series and always holding the key slice. Each stack slice's HU "
        "is linearly interpolated along z between the two real slices around it (their exact positions; an "
        "undecodable slice is never used), then windowed like the key slice: `stack_window` with "
        "`stack_window_center` / `stack_window_width` in HU. Rows of one finding in `vqa` are joined by "
        "`finding_id`."
        + (" With grounding, `stack_mask` holds the organ mask (`mask_labels`) on every stack slice, sampled "
           "where the plane lies in the mask's own grid (nearest neighbour, 255 = organ); null without a mask."
           if plan.grounding else ""),
        "",
        f"Range rules: {_counts(dict(rules))}; windows: {_counts(dict(windows))}"
        + (f"; stack spacing {min(spacing):.2f}-{max(spacing):.2f} mm." if spacing else "."),
        "",
    ]


def render_card(plan: ExportPlan, shards: Sequence[ShardFile], *, repo_id: str, license: str,
                state: Mapping[str, Any], fractions: Sequence[float], scrubbed: int = 0,
                stats: ExportStats | None = None, release: str | None = None,
                changes: Mapping[str, Any] | None = None) -> str:
    """The whole card; ``scrubbed`` is the number of values ``--scrub-text`` changed (said in the card, so
    users know that ``[NAME]``-style placeholders in the text are deliberate); ``stats`` adds the statistics
    section with the plots of ``stats/`` (drawn by :func:`keyslice.publish.stats.draw_stats`); ``release`` is
    the tag this publish creates and ``changes`` what changed since the previous release
    (:func:`keyslice.publish.releases.release_changes`)."""
    meta = card_metadata(plan, shards, license=license)
    counts: dict[str, Counter[str]] = {c: Counter() for c in CONFIGS}
    for shard in shards:
        counts[shard.config][shard.split] += shard.rows
    groups = plan.split_groups()

    segmenters = Counter(r.fields["segmenter"] for r in plan.rows["findings"])
    models = Counter((r.fields["model_id"], r.fields["weights_sha256"]) for r in plan.rows["selections"])
    prompts = Counter((r.fields["generator"], r.fields["prompt_version"] or "(none: rule templates)")
                      for r in plan.rows["vqa"])
    phases = Counter(r.fields["phase"] for r in plan.rows["selections"])
    qtypes = Counter((r.fields["question_type"], r.fields["answer_type"]) for r in plan.rows["vqa"])
    sources = Counter(r.fields.get("answer_source") or "unknown" for r in plan.rows["vqa"])
    excluded = plan.excluded
    sels = [r.fields for r in plan.rows["selections"]]
    margins = sorted(f["margin"] for f in sels if f["margin"] is not None)
    reviewed = Counter(f["review_status"] or "not reviewed" for f in sels)

    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        "A medical visual-question-answering dataset of CT key slices, built by "
        f"keyslice {__version__} from routine CT studies and their radiology reports: "
        "report sentences are segmented into findings, each finding is read on a phase-appropriate series, "
        "a key slice is selected by image-text similarity, and question-answer pairs are generated from the "
        "finding. Images are windowed 8-bit PNG renderings of single CT slices.",
        "",
        "## Configurations",
        "",
        _table(["config", "what a row is", *SPLITS],
               [(c, DESCRIPTIONS[c], *(counts[c].get(s, 0) for s in SPLITS)) for c in CONFIGS]),
        "",
        "```python",
        "from datasets import load_dataset",
        f'vqa = load_dataset("{repo_id}", "vqa")          # also "findings", "selections"',
        "```",
        "",
        "## Splits",
        "",
        f"Splits are assigned by patient (the keyed-hash `patient_id`; the study when the DICOM had no "
        f"PatientID), train/validation/test {'/'.join(str(round(f * 100)) for f in fractions)} by a "
        f"deterministic hash, so no patient appears in two splits and existing patients keep their split "
        f"when the dataset grows. {plan.studies} studies of {plan.patients} patients: "
        + ", ".join(f"{s} {len(groups.get(s, ()))} patients" for s in SPLITS) + ".",
        "",
        *(_stats_section(stats) if stats is not None else []),
        "## How it was built",
        "",
        "### Report segmenter",
        "",
        "`rules-v1` is keyslice's rule-based segmenter; `llm-v1:<prompt_version>:<model>` an LLM through an "
        "OpenAI-compatible endpoint with that versioned prompt.",
        "",
        _table(["segmenter", "findings"], [(f"`{name}`", n) for name, n in sorted(segmenters.items())]),
        "",
        "### Key-slice selector models",
        "",
        _table(["model_id", "weights_sha256", "selections"],
               [(f"`{m}`", f"`{w}`", n) for (m, w), n in sorted(models.items())]),
        "",
        "### VQA generators and prompt versions",
        "",
        _table(["generator", "prompt_version", "pairs"],
               [(f"`{g}`", f"`{p}`", n) for (g, p), n in sorted(prompts.items())]),
        "",
        _table(["question_type", "answer_type", "pairs"],
               [(q, a, n) for (q, a), n in sorted(qtypes.items())]),
        "",
        "Where each answer comes from (`answer_source`): `finding`, the report's own structured finding; "
        "`series`, the DICOM header (plane, phase); `mask`, an organ the segmentation masks show on the slice "
        "but the report never mentions (an assumption, off unless the build asked for it); `unknown`, rows "
        "built before answers recorded their source.",
        "",
        _table(["answer_source", "pairs"], sorted(sources.items())),
        "",
        f"Near-duplicate pairs removed: {plan.duplicates_removed} (the same question with the same answer about "
        f"the same or an adjacent slice, up to {NEAR_DUPLICATE_SLICES} slice(s) apart, of one study and series is "
        "exported once).",
        "",
        "### Contrast phase",
        "",
        PHASE_RULES,
        "",
        _table(["phase", "key slices"], sorted(phases.items())),
        "",
        "### Confidence",
        "",
        "Every row carries how sure its key slice is: `margin` (the selector's top-1 similarity minus the best "
        "similarity of a slice farther away than the Acc@1 tolerance; small = another region scored almost as "
        "high), `uncertain` (margin below the selector's threshold; null = unknown) and, where radiologists "
        "reviewed key slices, `review_status` (`accepted` by every reviewer, `rejected` by every reviewer, "
        "`disputed`; null = not reviewed) with `n_reviews`. "
        + (f"{len(margins)} of {len(sels)} key slices have a margin (median {margins[len(margins) // 2]:.4f}, "
           f"min {margins[0]:.4f}, max {margins[-1]:.4f}); "
           if margins else "No key slice has a margin (the corpus predates selection confidence); ")
        + f"{sum(1 for f in sels if f['uncertain'])} are flagged uncertain.",
        "",
        _table(["review_status", "key slices"], sorted(reviewed.items())),
        "",
        (f"Exported with `--min-confidence {plan.min_confidence}`: rows whose key slice has a lower or no margin "
         f"were left out ({_counts(plan.low_confidence)}; counted before near-duplicate removal)." if plan.min_confidence is not None
         else "No confidence filter was applied (`keyslice publish --min-confidence M` exports only rows whose "
              "margin is at least M)."),
        "",
        *(["### Slice context", "",
           "`findings` and `selections` rows carry `context`: the key slice"
           + (f", up to {plan.context_slices} slice(s) on each side of it" if plan.context_slices else "")
           + (" and the selector's other top-k slices" if plan.context_topk else "")
           + " in the same series, rendered with the row's `window`, in ascending z; "
           "`context_indices` are their indices in the position-sorted series and `context_z_mm` their z "
           "positions in mm (the window is clipped at the ends of the series).", ""]
          if plan.context_slices or plan.context_topk else []),
        *(["### Grounding", "",
           "Where the study had organ masks (TotalSegmentator, DICOM-SEG), `findings` and `selections` rows carry "
           "`mask`: the union of the finding's organ labels resampled onto the key slice (8-bit PNG, 255 = organ), "
           "and `mask_labels`, the TotalSegmentator labels it shows; `vqa` rows carry the `mask_labels` of their "
           f"finding. {sum(1 for r in plan.rows['findings'] if r.fields.get('mask_labels'))} of "
           f"{len(plan.rows['findings'])} findings are grounded; the others have a null `mask`.", ""]
          if plan.grounding else []),
        *(_stack_section(plan) if plan.stack_slices else []),
        "### Exclusions",
        "",
        "Never exported: series whose DICOM says `BurnedInAnnotation YES` and secondary captures (text in "
        "pixels cannot be checked), as the corpus recorded them and, where slices, stacks or masks are read from "
        "the studies folder, as its DICOM headers say at export; studies whose build is incomplete or failed a "
        "stage. "
        f"Series excluded: {_counts(excluded.get('series'))}; rows excluded: {_counts(excluded.get('rows'))}; "
        f"incomplete studies left out: {excluded.get('incomplete_studies', 0)}.",
        "",
        "## Privacy",
        "",
        "Patient, study and series identifiers are keyed-hash (HMAC-SHA256) pseudonyms; raw DICOM UIDs, names, "
        "dates and folder names never enter the corpus. Report text was de-identified when it was read (names, "
        "dates, ID numbers, addresses, contacts and ages over 89 replaced by `[NAME]`, `[DATE]`...). Before "
        f"export every string column went through keyslice's privacy gate ({RULES_VERSION}: the same rules, "
        "plus UIDs, URLs, local paths and institutions), every identifier was checked to be a pseudonym, and "
        "every PNG was checked to hold no "
        "metadata chunks (only IHDR/PLTE/IDAT/IEND). "
        + (f"{scrubbed} report-derived text value(s) had PHI-looking spans replaced by placeholders such as "
           "`[NAME]` or `[DATE]`. " if scrubbed else "")
        + "The gate is rule-based: it lowers the risk, it does not prove the absence of identifying information. "
        "Report any problem to the dataset's maintainers.",
        "",
        *_release_section(repo_id, release, changes),
        "## Provenance",
        "",
        f"Corpus state `{state['corpus_state']}` ({state['n_markers']} stage markers, "
        f"{len(state['run_ids'])} build run(s)). Limitations: key slices are chosen automatically by the model "
        "above and answers are derived from report text, not verified by a radiologist.",
        "",
    ]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{header}---\n\n" + "\n".join(body)
