"""``keyslice publish`` and ``stats``: the Hugging Face export behind the privacy gate, and the statistics
of what it would export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from keyslice.cli.output import console, refuse


def publish(
    out: Path = typer.Option(..., "--out", help="corpus folder to publish"),
    repo_id: str = typer.Option(..., "--repo-id", help="Hugging Face dataset repository, ORG/NAME"),
    private: bool = typer.Option(False, "--private", help="create the repository private (refused if it exists public)"),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="write what would be uploaded into this folder "
                                                                    "(Parquet shards + README.md); upload nothing"),
    license: str = typer.Option("other", "--license", help="license id for the dataset card (e.g. cc-by-4.0)"),
    input_dir: Optional[Path] = typer.Option(None, "--input", help="the studies folder the corpus was built from: "
                                             "also check that no DICOM header identifier appears in the export"),
    scrub_text: bool = typer.Option(False, "--scrub-text", help="replace PHI-looking spans of report sentences, "
                                    "questions and answers by [NAME]/[DATE]... (listed in the privacy report) "
                                    "instead of refusing; identifiers, DICOM values and images are never scrubbed"),
    max_shard_mb: int = typer.Option(500, "--max-shard-mb", help="target Parquet shard size"),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="export only rows whose key "
                                                   "slice has a selector margin of at least this (unknown = left out)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="make this publish a named, immutable release (a Hub "
                                      "tag; recorded in CORPUS/publish/; a dry run records it as a dry run)"),
    context: int = typer.Option(0, "--context", help="add N slices on each side of every key slice to findings and "
                                "selections rows (ascending z, with z in mm); needs --input"),
    context_topk: bool = typer.Option(False, "--context-topk", help="also add the selector's top-k slices to the "
                                      "slice context; needs --input"),
    grounding: bool = typer.Option(False, "--grounding", help="add the finding's organ mask on the key slice (where "
                                   "the study has TotalSegmentator / DICOM-SEG masks) and its labels; needs --input"),
    stack: int = typer.Option(0, "--stack", help="add N slices per finding evenly spaced in z over its organ's mask "
                              "range (+-10 mm; else +-60 mm around the key slice), HU linearly interpolated, "
                              "windowed like the key slice (e.g. 32); with --grounding their masks too; needs --input"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="masks root read after each study's own masks for "
                                         "--grounding (default: the one the corpus' last build was given)"),
) -> None:
    """Publish the corpus as a Hugging Face dataset (configs vqa, findings, selections), behind a privacy gate.

    Needs $KEYSLICE_PSEUDONYM_KEY and a Hub write token (HF_TOKEN or `hf auth login`); uploads only changed shards.
    """
    from huggingface_hub.errors import HfHubHTTPError
    from rich.markup import escape

    from keyslice.publish import MissingKeyError, PrivacyError, PublishError, publish_corpus

    try:
        result = publish_corpus(out, repo_id, private=private, dry_run_dir=dry_run, license=license,
                                input_dir=input_dir, scrub_text=scrub_text, max_shard_bytes=max_shard_mb * 1024 * 1024,
                                min_confidence=min_confidence, tag=tag, context_slices=context,
                                context_topk=context_topk, grounding=grounding, stack_slices=stack, masks_dir=masks,
                                log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    except (MissingKeyError, PrivacyError, PublishError) as exc:
        refuse(console, "publish refused", str(exc), 2)
    except HfHubHTTPError as exc:
        refuse(console, "the Hub refused the upload", f"{exc}\n(a write token is needed: set HF_TOKEN or run "
               "`hf auth login`)", 3)
    table = Table(title=f"{repo_id}: rows per configuration and split")
    for col in ("config", "train", "validation", "test"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for config, splits in result.counts.items():
        table.add_row(config, *(str(splits.get(s, 0)) for s in ("train", "validation", "test")))
    console.print(table)
    if result.dry_run:
        console.print(f"load it back: datasets.load_dataset({str(result.staged_dir)!r}, 'vqa')")


def stats(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder for the plot PNGs (default: CORPUS/stats)"),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="as for publish"),
) -> None:
    """Statistics of what `keyslice publish` would export (organs, abnormalities, phases, question and answer
    balance, key-slice position, selector confidence): printed, and drawn as the card's PNG plots."""
    from rich.markup import escape

    from keyslice.publish import PublishError
    from keyslice.publish.stats import STATS_DIR, corpus_stats, draw_stats, stats_tables

    try:
        result = corpus_stats(out, min_confidence=min_confidence)
    except PublishError as exc:
        refuse(console, "stats", str(exc), 2)
    for title, (header, rows) in stats_tables(result).items():
        table = Table(title=title)
        for col in header:
            table.add_column(str(col))
        for row in rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)
    written = draw_stats(result, plots or out / STATS_DIR)
    console.print(f"{len(written)} plots in {escape(str(plots or out / STATS_DIR))}", highlight=False,
                  soft_wrap=True)
