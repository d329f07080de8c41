"""``keyslice segment``: TotalSegmentator organ masks for the studies that have none, written to a masks
root that ``keyslice build --masks`` reads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
import yaml

from keyslice.cli.output import console, err_console


class SegmentDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


def segment(
    input_dir: Path = typer.Option(..., "--input", help="folder of studies (see README: input contract)"),
    masks: Path = typer.Option(..., "--masks", help="masks root: INPUT/<folder>'s labelmap goes to "
                               "MASKS/<folder>/totalseg_seg.nii.gz (give it to `keyslice build --masks`)"),
    fast: bool = typer.Option(True, "--fast/--full", help="TotalSegmentator's 3 mm model (default) or the "
                                                         "1.5 mm one (five models, slower, more memory)"),
    device: SegmentDevice = typer.Option(SegmentDevice.gpu, "--device", help="gpu or cpu"),
    overwrite: bool = typer.Option(False, "--overwrite", help="segment studies that already have masks again "
                                                            "(replacing the labelmaps this command wrote)"),
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="YAML build config: its report segmenter, manifest and limits "
                                               "choose the series as the build will"),
) -> None:
    """Organ masks for the studies that have none: TotalSegmentator on the series step 2 would choose, written
    under MASKS (never into INPUT), where `keyslice build --masks MASKS` finds them.

    One line per study on standard output (folder, status, detail; tab-separated in a pipe), the summary on
    standard error. Exit status: 0 every study segmented or already had masks; 1 some study failed (its line
    says why, e.g. weights missing) or none was found; 2 bad options.
    """
    from keyslice.config import BuildConfig
    from keyslice.pipeline.organ_masks import segment_studies
    from keyslice.selector import totalsegmentator_segmenter
    from keyslice.selector.totalseg import check_totalsegmentator

    if not input_dir.is_dir():
        raise typer.BadParameter(f"input folder {input_dir} does not exist; --input must be a folder of studies")
    try:
        cfg = BuildConfig.from_settings(config, input_dir=str(input_dir), out_dir=str(masks))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"build config {config}: {exc}") from exc
    plain = not console.is_terminal
    colour = {"segmented": "green", "skipped": "dim", "failed": "red"}

    def show(outcome) -> None:
        line = f"{outcome.folder}\t{outcome.status}\t{outcome.detail}"
        if plain:  # a pipe: tab-separated fields, no markup
            typer.echo(line)
        else:
            from rich.text import Text

            console.print(Text(line.replace("\t", "  "), style=colour[outcome.status]), soft_wrap=True)

    outcomes = segment_studies(input_dir, masks, totalsegmentator_segmenter(fast=fast, device=device.value),
                               config=cfg, overwrite=overwrite, progress=show,
                               check=lambda: check_totalsegmentator(fast))
    counts = {status: sum(o.status == status for o in outcomes) for status in ("segmented", "skipped", "failed")}
    summary = (f"{len(outcomes)} studies: {counts['segmented']} segmented, {counts['skipped']} already had masks, "
               f"{counts['failed']} failed")
    err_console.print(summary, markup=False, highlight=False, soft_wrap=True)
    if not outcomes:
        err_console.print(f"no study found under {input_dir}: a study is a folder with a report.txt (or a "
                          "manifest.csv row); see the README's input contract", markup=False, highlight=False)
        raise typer.Exit(code=1)
    if counts["failed"]:
        err_console.print(f"the failed studies have no masks: fix what their line says and rerun; then build with "
                          f"`keyslice build --input {input_dir} --masks {masks} ...`", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)
