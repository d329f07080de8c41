"""Slice context at export (``keyslice publish --context N --input STUDIES``): the slices around each key slice.

The corpus keeps only each finding's key-slice PNG, so the context is re-read from the studies the
corpus was built from through the review app's slice source (:class:`keyslice.review.slices.SliceSource`:
study and series matched by their pseudonyms, the series refused when it no longer has the slice
count the selection was made on, the selection's window, one renderer for the build, the review app
and the export). Per ``findings`` and ``selections`` row the export adds ``context`` (a list of
images), ``context_indices`` and ``context_z_mm``: the key slice and up to ``N`` slices on each side of
it in the same series, with ``--context-topk`` also the selector's other top-k slices, in ascending z. The series is the selection's own, which the export already
checked is neither burned-in nor a secondary capture, in the corpus' series table and again in its
headers in the studies folder (:func:`drop_unsafe_input_series`); every context PNG also goes
through the privacy gate's PNG check. Volumes are read one series at a time (a few kept), and the stacks are
rendered shard by shard while the shards are written, never all at once.
"""

from __future__ import annotations

from pathlib import Path

from keyslice.publish.dataset_builder import CONFIGS, ExportPlan, ExportRow, PublishError, excluded_series

#: configurations whose rows get the slice context
CONTEXT_CONFIGS = ("findings", "selections")


def context_name(row: ExportRow, index: int) -> str:
    """File name of a context slice in the Image feature: study and series pseudonyms and the slice index."""
    return f"{row.fields['study_id']}_{row.fields['series_id']}_{index}.png"


def open_slice_source(corpus_dir: Path, input_dir: Path | None, pseudonymize, option: str):
    """The review app's slice source over the studies folder (``option`` names the flag that needs it)."""
    from keyslice.review.slices import SliceSource

    if input_dir is None or not Path(input_dir).is_dir():
        raise PublishError(f"{option} needs --input STUDIES: the corpus keeps only the key slices, the slices and "
                           f"masks are read from the studies folder the corpus was built from")
    return SliceSource(Path(corpus_dir), Path(input_dir), pseudonymize)


def series_z(source, sel: dict) -> list[float]:
    """z (mm) of every slice of a selection's series, or :class:`PublishError` naming the study."""
    from keyslice.review.slices import SeriesMismatchError

    study, series, n = sel["study_id"], sel["series_id"], int(sel["n_slices"])
    if not source.has_study(study):
        raise PublishError(f"study {study} is not in the --input folder; pass the studies folder the corpus "
                           f"was built from")
    try:
        return source.z_mm(study, series, n)
    except SeriesMismatchError as exc:
        raise PublishError(f"slice context of study {study}: {exc}") from exc


def drop_unsafe_input_series(plan: ExportPlan, source) -> dict[str, str]:
    """Leave out every row on a series that the studies folder now shows burned-in or a secondary capture.

    Context, stacks and masks are read from the studies folder, not from the corpus, so its series are
    checked as their DICOM headers say now, by the same rule the export applies to the corpus' series
    table (:func:`keyslice.publish.dataset_builder.excluded_series`): a series whose files gained
    ``BurnedInAnnotation YES`` (or that is a secondary capture) since the build gives no stack, no context
    and no key slice either. The rows left out are counted in ``plan.excluded`` under the same reasons as
    the corpus' own exclusions, so the card and the privacy report name them. Returns series_id -> reason.
    """
    from keyslice.review.slices import SeriesMismatchError

    rows: dict[str, dict] = {}
    for config in CONFIGS:
        for r in plan.rows[config]:
            key = r.fields["series_id"]
            if key not in rows:
                try:
                    rows[key] = source.series_row(r.fields["study_id"], key)
                except SeriesMismatchError as exc:
                    raise PublishError(f"slice context of study {r.fields['study_id']}: {exc}") from exc
    drop = excluded_series(rows)
    if drop:
        series = plan.excluded.setdefault("series", {})
        counts = plan.excluded.setdefault("rows", {})
        for reason in drop.values():
            series[reason] = series.get(reason, 0) + 1
        for config in CONFIGS:
            kept = []
            for r in plan.rows[config]:
                reason = drop.get(r.fields["series_id"])
                if reason is None:
                    kept.append(r)
                else:
                    counts[f"{config}:{reason}"] = counts.get(f"{config}:{reason}", 0) + 1
            plan.rows[config] = kept
        plan.excluded["rows"] = dict(sorted(counts.items()))
        plan.studies = len({r.fields["study_id"] for rows_ in plan.rows.values() for r in rows_})
        plan.patients = len({r.group for rows_ in plan.rows.values() for r in rows_})
    return drop


class ContextSlices:
    """Attach and render the slice context of the rows of an export plan."""

    def __init__(self, source, half_width: int, topk: bool = False) -> None:
        if half_width < 0 or (half_width == 0 and not topk):
            raise PublishError(f"--context must be at least 1 slice on each side (or use --context-topk), "
                               f"got {half_width}")
        self.source = source
        self.half_width = half_width
        self.topk = topk
        self.n_slices: dict[str, int] = {}      # finding_id -> series length the selection was made on

    def attach(self, plan: ExportPlan, selections: dict[str, dict]) -> None:
        """Set ``context_indices`` / ``context_z_mm`` on every findings/selections row (z ascending)."""
        rows = sorted((r for c in CONTEXT_CONFIGS for r in plan.rows[c]),
                      key=lambda r: (r.fields["study_id"], r.fields["series_id"]))
        for row in rows:
            sel = selections[row.fields["finding_id"]]
            n = int(sel["n_slices"])
            z = series_z(self.source, sel)
            top = int(sel["top1_index"])
            wanted = set(range(max(0, top - self.half_width), min(n, top + self.half_width + 1))) | {top}
            if self.topk:
                wanted |= {int(i) for i in sel["topk_indices"] if 0 <= int(i) < n}
            indices = sorted(wanted, key=lambda i: (z[i], i))
            row.fields["context_indices"] = indices
            row.fields["context_z_mm"] = [z[i] for i in indices]
            self.n_slices[row.fields["finding_id"]] = n
        plan.context_slices = self.half_width
        plan.context_topk = self.topk

    def images(self, row: ExportRow) -> list[tuple[str, bytes]]:
        """(name, PNG) of a row's context slices, in the row's order."""
        n = self.n_slices[row.fields["finding_id"]]
        return [(context_name(row, i), self.source.png(row.fields["study_id"], row.fields["series_id"], n, i,
                                                        row.fields["window"]))
                for i in row.fields["context_indices"]]
