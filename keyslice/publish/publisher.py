"""``keyslice publish``: corpus -> privacy gate -> staged dataset folder -> (incremental) Hub commit.

Order of operations, each a hard stop on failure:

1. a deliberate pseudonymisation key (``$KEYSLICE_PSEUDONYM_KEY``) must be set: publishing
   identifiers made with a throw-away key, or a key nobody controls, is refused;
2. under the corpus lock (no build may write meanwhile): read the complete studies, plan the
   rows (exclusions, patient splits), with ``--scrub-text`` replace PHI-looking spans of the
   report-derived text, then run the privacy gate on exactly those rows and images;
3. still under the lock, write the Parquet shards and the card into a staging folder (the
   ``--dry-run`` folder, or a temporary one);
4. compare with the Hub (or, for a dry run, with the previous publish's manifest) and commit only
   what changed; record the publish in ``CORPUS/publish/<org>__<name>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from keyslice import __version__
from keyslice.corpus.status import last_build_setting
from keyslice.publish import hub, releases
from keyslice.publish.card import render_card
from keyslice.publish.dataset_builder import (CONFIGS, DEFAULT_FRACTIONS, DEFAULT_MAX_SHARD_BYTES, ID_COLUMNS,
                                              KEY_COLUMNS, REPORT_TEXT_COLUMNS, SOFTWARE_COLUMNS, ExportPlan,
                                              PublishError, corpus_state, exported_record, plan_export, read_corpus,
                                              resolve_image, write_shards)
from keyslice.publish.context import (CONTEXT_CONFIGS, ContextSlices, context_name, drop_unsafe_input_series,
                                      open_slice_source)
from keyslice.publish.grounding import Grounding
from keyslice.publish.stack import KEY_HALF_RANGE_MM, ORGAN_MARGIN_MM, Stacks, stack_name
from keyslice.publish.stats import STATS_DIR, draw_stats, export_stats
from keyslice.publish.privacy import Hit, PrivacyGate, PrivacyReport, clean_png, read_study_phi_values, scrub_rows
from keyslice.pseudonym import KEY_ENV, MissingKeyError, Pseudonymizer, load_pseudonymizer


def key_instructions(corpus_dir: Path) -> str:
    key_file = Path(corpus_dir) / ".keyslice" / "pseudonym.key"
    lines = [f"publishing needs a deliberate pseudonymisation key in ${KEY_ENV} (the secret the corpus was built "
             "with; keep it out of the corpus folder and out of version control)."]
    if key_file.exists():
        lines.append(f"This corpus was built with a generated key; adopt it deliberately with\n"
                     f"    export {KEY_ENV}=\"$(cat {key_file})\"\n"
                     f"then store it in your secret manager and delete {key_file}.")
    else:
        lines.append(f"For a new corpus create one before `keyslice build` with\n"
                     f"    export {KEY_ENV}=\"$(python -c 'import secrets; print(secrets.token_hex(32))')\"")
    return "\n".join(lines)


def require_deliberate_key(corpus_dir: Path) -> Pseudonymizer:
    """The env key, or :class:`MissingKeyError` saying how to set it."""
    try:
        pseudonymize = load_pseudonymizer(Path(corpus_dir), create=False)
    except MissingKeyError as exc:
        raise MissingKeyError(key_instructions(corpus_dir)) from exc
    if pseudonymize.source != "env":
        raise MissingKeyError(key_instructions(corpus_dir))
    key_file = Path(corpus_dir) / ".keyslice" / "pseudonym.key"
    if key_file.exists() and key_file.read_bytes().strip() != pseudonymize.key:
        raise MissingKeyError(
            f"${KEY_ENV} differs from the key this corpus was built with ({key_file}); its pseudonyms were not made "
            f"with your key. Set ${KEY_ENV} to that file's content (and then delete the file), or rebuild the "
            f"corpus with your key.")
    built_with = _build_key_fingerprints(Path(corpus_dir))
    if built_with - {pseudonymize.fingerprint}:
        raise MissingKeyError(
            f"${KEY_ENV} is not the key this corpus was built with: its builds recorded key fingerprint(s) "
            f"{', '.join(sorted(built_with))}, yours is {pseudonymize.fingerprint} "
            f"(`keyslice sql --out {corpus_dir} \"select run_id, key_fingerprint from runs\"`). Publish with the "
            f"build's key, or rebuild the corpus with yours.")
    return pseudonymize


def _build_key_fingerprints(corpus_dir: Path) -> set[str]:
    """Fingerprints of the keys the corpus' builds used (one, unless someone changed the key midway)."""
    from keyslice.corpus.sql import query

    rows = query(corpus_dir, "SELECT DISTINCT key_fingerprint FROM runs WHERE key_fingerprint IS NOT NULL")
    return {r["key_fingerprint"] for r in rows.to_pylist()}


@dataclass
class PublishResult:
    repo_id: str
    dry_run: bool
    staged_dir: Path | None          # the dry-run folder (None after a real publish: staging is removed)
    files: dict[str, dict[str, Any]]  # path -> size, sha256, rows
    upload: list[str]
    delete: list[str]
    unchanged: list[str]
    uploaded_bytes: int
    commit: str | None
    state: dict[str, Any]
    counts: dict[str, dict[str, int]]  # config -> split -> rows
    privacy: PrivacyReport
    manifest: Path | None


def _known_phi(input_dir: Path, pseudonymize: Pseudonymizer, study_ids: set[str]) -> dict[str, set[str]]:
    """Identifying DICOM header values per exported study, read from the source studies."""
    from keyslice.pipeline.studies import discover_studies

    if not Path(input_dir).is_dir():
        raise PublishError(f"--input {input_dir} is not a folder; pass the studies folder the corpus was built from")
    found = {s.study_id: s for s in discover_studies(Path(input_dir), pseudonymize)}
    missing = sorted(study_ids - set(found))
    if missing and len(missing) == len(study_ids):
        raise PublishError(f"none of the corpus' studies is in {input_dir} under ${KEY_ENV}: wrong --input folder, "
                           f"or the corpus was built with another key")
    if missing:
        raise PublishError(f"{len(missing)} exported studies are not in {input_dir} (e.g. {missing[0]}); their DICOM "
                           f"headers cannot be checked. Pass the input folder the corpus was built from.")
    return {sid: read_study_phi_values(found[sid].path) for sid in sorted(study_ids)}


def scrub_plan(plan: ExportPlan) -> list[Hit]:
    """``--scrub-text``: PHI-looking spans of the report-derived columns replaced in the planned rows."""
    changed = []
    for config, columns in REPORT_TEXT_COLUMNS.items():
        changed += scrub_rows(config, (r.fields for r in plan.rows[config]), KEY_COLUMNS[config][0], columns)
    return changed


def run_gate(plan: ExportPlan, corpus_dir: Path, known_phi: Mapping[str, set[str]] | None = None,
             context: ContextSlices | None = None, grounding: Grounding | None = None,
             stacks: Stacks | None = None) -> PrivacyGate:
    """The privacy gate over exactly what would be exported: rows with their image names (the stacks'
    included) and the PNGs (the slice context's and the masks'). Stack PNGs are rendered once, while the
    shards are written into the staging folder, and checked there by :func:`checked_stack_images` before
    anything leaves it."""
    gate = PrivacyGate(known_phi)
    for table, row, column, what in plan.problems:
        rule, _, detail = what.partition(": ")
        gate.report.hits.append(Hit(table, row, column, rule, detail))
    for config in CONFIGS:
        with_context = context is not None and config in CONTEXT_CONFIGS
        with_mask = grounding is not None and config in CONTEXT_CONFIGS
        with_stack = stacks is not None and config in CONTEXT_CONFIGS
        gate.check_rows(config, (exported_record(r, None, [(context_name(r, i), None)
                                                           for i in r.fields["context_indices"]]
                                                 if with_context else None,
                                                 _mask_name(grounding, r) if with_mask else False,
                                                 _stack_names(r) if with_stack else None,
                                                 (_stack_names(r) if grounding.labels.get(r.fields["finding_id"])
                                                  else None) if with_stack and with_mask else False)
                                 for r in plan.rows[config]),
                        KEY_COLUMNS[config], ID_COLUMNS, SOFTWARE_COLUMNS)
    seen = set()
    for rows in plan.rows.values():
        for r in rows:
            if r.image_path in seen:
                continue
            seen.add(r.image_path)
            gate.check_png(r.image_path, resolve_image(corpus_dir, r.image_path).read_bytes())
    if grounding is not None:
        for config in CONTEXT_CONFIGS:
            for r in plan.rows[config]:
                mask = grounding.mask(r)
                if mask is not None:
                    gate.check_png(f"mask:{mask[0]}", mask[1])
    if context is not None:
        checked = set()
        for config in CONTEXT_CONFIGS:
            for r in plan.rows[config]:
                for name, data in context.images(r):
                    if name not in checked:
                        checked.add(name)
                        gate.check_png(name, data)
    gate.report.excluded = plan.excluded
    return gate


def _mask_name(grounding: Grounding, row) -> tuple[str, None] | None:
    """The mask's file name as the gate sees the row (None: no mask)."""
    if not grounding.labels.get(row.fields["finding_id"]):
        return None
    top = row.fields["top1_index"] if "top1_index" in row.fields else row.fields["slice_index"]
    return context_name(row, int(top)), None


def checked_stack_images(gate: PrivacyGate, stacks: Stacks, config: str, row, masks: bool = False
                         ) -> list[tuple[str, bytes]] | None:
    """A row's stack PNGs (``masks``: the masks on them, None without) through the gate's PNG check, cleaned."""
    images = stacks.masks(row) if masks else stacks.images(row)
    if images is None:
        return None
    out = []
    for name, data in images:
        cleaned = gate.check_png(f"{config}:{name}", data)
        out.append((name, cleaned if cleaned is not None else b""))
    return out


def _stack_names(row) -> list[tuple[str, None]]:
    """The stack's file names as the gate sees the row."""
    return [(stack_name(row, j), None) for j in range(len(row.fields["stack_z_mm"]))]


def _write_report(corpus_dir: Path, repo_id: str, report: PrivacyReport) -> Path:
    from keyslice.corpus.atomic import write_bytes_atomic

    path = Path(corpus_dir) / "publish" / (repo_id.replace("/", "__") + ".privacy.json")
    write_bytes_atomic(path, json.dumps(report.to_dict(), indent=1, default=str).encode())
    return path


def _prepare_dry_run_dir(target: Path) -> None:
    """A dry-run folder must be new, empty, or a previous dry run's output (which is replaced)."""
    if not target.exists():
        return
    entries = {p.name for p in target.iterdir()}
    ours = set(CONFIGS) | {"README.md", STATS_DIR}
    if entries - ours:
        raise PublishError(f"--dry-run folder {target} holds other files ({sorted(entries - ours)[:5]}); "
                           f"give a new or empty folder")


def stage(corpus_dir: Path, dest: Path, *, repo_id: str, license: str, fractions, max_shard_bytes: int,
          known_phi_input: Path | None, scrub: bool, pseudonymize: Pseudonymizer, log: Callable[[str], None],
          min_confidence: float | None = None, release: str | None = None,
          previous_release: dict | None = None, context_slices: int = 0, context_topk: bool = False,
          grounding: bool = False, stack_slices: int = 0, masks_dir: Path | None = None):
    """Lock, read, (scrub,) gate, write shards + card into ``dest``. Returns (plan, shards, state, report)."""
    from keyslice.corpus.lock import CorpusLockedError, corpus_lock

    try:
        with corpus_lock(corpus_dir):
            return _stage_locked(corpus_dir, dest, repo_id=repo_id, license=license, fractions=fractions,
                                 max_shard_bytes=max_shard_bytes, known_phi_input=known_phi_input, scrub=scrub,
                                 pseudonymize=pseudonymize, log=log, min_confidence=min_confidence,
                                 release=release, previous_release=previous_release,
                                 context_slices=context_slices, context_topk=context_topk, grounding=grounding,
                                 stack_slices=stack_slices, masks_dir=masks_dir)
    except CorpusLockedError as exc:
        raise PublishError(f"{exc}; publish reads a consistent corpus, so it waits for builds to finish") from exc


def _stage_locked(corpus_dir: Path, dest: Path, *, repo_id: str, license: str, fractions, max_shard_bytes: int,
                  known_phi_input: Path | None, scrub: bool, pseudonymize: Pseudonymizer,
                  log: Callable[[str], None], min_confidence: float | None = None, release: str | None = None,
                  previous_release: dict | None = None, context_slices: int = 0, context_topk: bool = False,
                  grounding: bool = False, stack_slices: int = 0, masks_dir: Path | None = None):
    """The part of :func:`stage` that runs under the corpus lock."""
    state = corpus_state(corpus_dir)
    snap = read_corpus(corpus_dir)
    if not snap.complete:
        raise PublishError(f"{corpus_dir} has no study with all stages done; run `keyslice build` first")
    plan = plan_export(snap, fractions, min_confidence=min_confidence)
    if min_confidence is not None:
        log(f"--min-confidence {min_confidence}: left out "
            + (", ".join(f"{n} {c} row(s)" for c, n in plan.low_confidence.items()) or "no row")
            + " whose key slice has a lower (or no) selector margin")
    exported = {r.fields["study_id"] for rows in plan.rows.values() for r in rows}
    if not exported:
        raise PublishError("nothing to export: no complete study has a key slice on an exportable series")
    known = _known_phi(known_phi_input, pseudonymize, exported) if known_phi_input else None
    context = masks = stacks = None
    selections = {sel["finding_id"]: sel for sel in snap.selections}
    if context_slices or context_topk or grounding or stack_slices:
        source = open_slice_source(corpus_dir, known_phi_input, pseudonymize,
                                   "--context" if context_slices or context_topk else
                                   "--stack" if stack_slices else "--grounding")
        unsafe = drop_unsafe_input_series(plan, source)
        if unsafe:
            log(f"left out {len(unsafe)} series that the studies folder now shows "
                f"{' or '.join(sorted(set(unsafe.values())))} (their rows are counted as excluded)")
        if not any(plan.rows.values()):
            raise PublishError("nothing to export: every key slice is on a series the studies folder shows "
                               "burned-in or a secondary capture")
        if context_slices or context_topk:
            context = ContextSlices(source, context_slices, context_topk)
            context.attach(plan, selections)
            log(f"slice context: {context_slices} slice(s) on each side of the key slice"
                f"{' and its top-k slices' if context_topk else ''}, read from {known_phi_input}")
        if grounding:
            masks = Grounding(source, masks_dir or last_build_setting(corpus_dir, "masks_dir"))
            masks.attach(plan, selections, snap.findings)
            log(f"grounding: {sum(1 for v in masks.labels.values() if v)} of {len(masks.labels)} key slices have "
                f"an organ mask")
        if stack_slices:
            stacks = Stacks(source, stack_slices, masks)
            stacks.attach(plan, selections)
            rules = [g.rule for g in stacks.geometry.values()]
            log(f"stacks: {stack_slices} slices resampled along z per finding, over the organ's mask z-range "
                f"(+-{ORGAN_MARGIN_MM:g} mm) for {rules.count('organ')} and +-{KEY_HALF_RANGE_MM:g} mm around "
                f"the key slice for {rules.count('key_slice')}")
    del snap, selections  # the plan holds every exported value: the corpus rows are not kept while writing
    scrubbed = scrub_plan(plan) if scrub else []
    gate = run_gate(plan, corpus_dir, known, context, masks, stacks)
    gate.report.scrubbed = scrubbed
    stats = export_stats(plan)
    for path in draw_stats(stats, dest / STATS_DIR):
        cleaned = gate.check_png(f"{STATS_DIR}/{path.name}", path.read_bytes())
        if cleaned is not None:
            path.write_bytes(cleaned)
    report_path = _write_report(corpus_dir, repo_id, gate.report)
    if scrub:
        log(f"--scrub-text: {len(scrubbed)} report-derived value(s) had PHI-looking spans replaced by placeholders "
            f"(each listed in the report)")
    log(f"privacy gate: {sum(gate.report.rows_checked.values())} rows, {gate.report.strings_checked} values, "
        f"{gate.report.images_checked} images checked; {len(gate.report.hits)} hit(s); report {report_path}")
    gate.raise_if_hits()

    def image_bytes(image_path: str) -> bytes:
        return clean_png(resolve_image(corpus_dir, image_path).read_bytes())[0]

    def context_images(row) -> list[tuple[str, bytes]]:
        return [(name, clean_png(data)[0]) for name, data in context.images(row)]

    shards = write_shards(plan, corpus_dir, dest, max_shard_bytes=max_shard_bytes, image_bytes=image_bytes,
                          context_images=context_images if context is not None else None,
                          mask_image=masks.mask if masks is not None else None,
                          stack_images=(lambda row, config: checked_stack_images(gate, stacks, config, row))
                          if stacks is not None else None,
                          stack_masks=(lambda row, config: checked_stack_images(gate, stacks, config, row, masks=True))
                          if stacks is not None else None)
    if stacks is not None:  # the stack PNGs were checked as they were rendered into the staging shards
        report_path = _write_report(corpus_dir, repo_id, gate.report)
        log(f"privacy gate, stacks: {gate.report.images_checked} images checked in all; "
            f"{len(gate.report.hits)} hit(s); report {report_path}")
        gate.raise_if_hits()
    card = render_card(plan, shards, repo_id=repo_id, license=license, state=state, fractions=fractions,
                       scrubbed=len(scrubbed), stats=stats, release=release,
                       changes=releases.release_changes(plan, previous_release) if previous_release else None)
    (dest / "README.md").write_text(card, encoding="utf-8")
    return plan, shards, state, gate.report


def publish_corpus(corpus_dir: Path, repo_id: str, *, private: bool = False, dry_run_dir: Path | None = None,
                   license: str = "other", input_dir: Path | None = None, scrub_text: bool = False,
                   fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, token: str | None = None,
                   endpoint: str | None = None, min_confidence: float | None = None, tag: str | None = None,
                   context_slices: int = 0, context_topk: bool = False, grounding: bool = False,
                   stack_slices: int = 0, masks_dir: Path | None = None,
                   log: Callable[[str], None] = print) -> PublishResult:
    """Publish a corpus to the Hub dataset ``repo_id`` (or stage it into ``dry_run_dir``).

    ``input_dir`` (the studies folder) adds the study's own DICOM header values to the gate's deny-list;
    ``scrub_text`` replaces PHI-looking spans of report-derived text instead of refusing on them;
    ``min_confidence`` leaves out rows whose key slice has a selector margin below it (or none);
    ``tag`` makes the publish a named, immutable release (:mod:`keyslice.publish.releases`);
    ``context_slices`` adds that many slices on each side of every key slice (``context_topk``: and its
    top-k slices; read from ``input_dir``,
    :mod:`keyslice.publish.context`); ``grounding`` the organ masks on the key slices (same folder,
    :mod:`keyslice.publish.grounding`); ``stack_slices`` a stack of that many slices resampled along z per
    finding (:mod:`keyslice.publish.stack`; with ``grounding`` its masks too). ``masks_dir``: the masks root
    read after each study's own masks (default: the one the corpus' last build was given).
    """
    corpus_dir = Path(corpus_dir)
    hub.check_repo_id(repo_id)
    if not (corpus_dir / "stages").is_dir():
        raise PublishError(f"{corpus_dir} is not a keyslice corpus (no stages/ folder); "
                           f"build one with `keyslice build`")
    pseudonymize = require_deliberate_key(corpus_dir)
    (corpus_dir / "publish").mkdir(parents=True, exist_ok=True)
    recorded = releases.read_releases(corpus_dir, repo_id)
    if tag is not None:
        releases.check_tag(tag)
        releases.check_new_release(recorded, tag)
    previous_release = releases.previous_release(recorded, dry_run=dry_run_dir is not None, tag=tag)

    if dry_run_dir is not None:
        target = Path(dry_run_dir).resolve()
        _prepare_dry_run_dir(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=corpus_dir / "publish"))
    try:
        plan, shards, state, report = stage(corpus_dir, staging, repo_id=repo_id, license=license,
                                            fractions=fractions, max_shard_bytes=max_shard_bytes,
                                            known_phi_input=input_dir, scrub=scrub_text, pseudonymize=pseudonymize,
                                            log=log, min_confidence=min_confidence, release=tag,
                                            previous_release=previous_release, context_slices=context_slices,
                                            context_topk=context_topk, grounding=grounding,
                                            stack_slices=stack_slices, masks_dir=masks_dir)
        files = hub.local_files(staging)
        rows = {s.path: s.rows for s in shards}
        record = hub.files_record(files.values(), rows)
        counts: dict[str, dict[str, int]] = {}
        for s in shards:
            counts.setdefault(s.config, {}).setdefault(s.split, 0)
            counts[s.config][s.split] += s.rows
        previous = hub.read_manifest(corpus_dir, repo_id)

        if dry_run_dir is not None:
            push_plan = hub.plan_against(files, hub.manifest_remote(previous))
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            if tag is not None:
                releases.record_release(corpus_dir, repo_id, tag=tag, dry_run=True, commit=None, state=state,
                                        files=record, counts=counts, plan=plan)
                log(f"dry run: release {tag!r} recorded as a dry run in "
                    f"{releases.releases_path(corpus_dir, repo_id)}")
            log(f"dry run: {len(files)} files in {target}; against the last publish"
                f"{'' if previous else ' (none yet)'}: {len(push_plan.upload)} to upload, "
                f"{len(push_plan.delete)} to delete, {len(push_plan.unchanged)} unchanged")
            return PublishResult(repo_id, True, target, record, push_plan.upload, push_plan.delete,
                                 push_plan.unchanged, sum(files[p].size for p in push_plan.upload), None, state,
                                 counts, report, None)

        message = f"keyslice publish (corpus state {state['corpus_state'][:12]})"
        description = json.dumps({"keyslice_version": __version__, **state}, indent=1)
        pushed = hub.push_folder(staging, repo_id, private=private, commit_message=message,
                                 commit_description=description, token=token, endpoint=endpoint, tag=tag,
                                 tag_message=f"keyslice release {tag} (corpus state {state['corpus_state'][:12]})"
                                 if tag else "")
        manifest = {
            "repo_id": repo_id, "private": private, "commit": pushed.head, "new_commit": pushed.commit,
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(), "keyslice_version": __version__,
            **state, "files": record, "uploaded": pushed.plan.upload, "deleted": pushed.plan.delete,
            "uploaded_bytes": pushed.uploaded_bytes, "counts": counts,
            "privacy": {"rules_version": report.rules_version, "rows_checked": report.rows_checked,
                        "images_checked": report.images_checked,
                        "png_chunks_removed": len(report.png_chunks_removed), "scrubbed": len(report.scrubbed),
                        "excluded": report.excluded},
            "previous_commit": (previous or {}).get("commit"),
        }
        if tag is not None:
            manifest["release"] = tag
            releases.record_release(corpus_dir, repo_id, tag=tag, dry_run=False, commit=pushed.head, state=state,
                                    files=record, counts=counts, plan=plan)
            log(f"release {tag!r}: tagged commit {pushed.head} on the Hub")
        path = hub.write_manifest(corpus_dir, repo_id, manifest)
        log(f"published {repo_id}: {len(pushed.plan.upload)} file(s) uploaded ({pushed.uploaded_bytes} bytes), "
            f"{len(pushed.plan.delete)} deleted, {len(pushed.plan.unchanged)} unchanged; "
            + (f"commit {pushed.commit}" if pushed.commit else "nothing changed, no commit"))
        return PublishResult(repo_id, False, None, record, pushed.plan.upload, pushed.plan.delete,
                             pushed.plan.unchanged, pushed.uploaded_bytes, pushed.commit, state, counts, report, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
