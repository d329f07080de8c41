"""The ``keyslice`` command line: the Typer app and its commands, registered in the order ``--help``
lists them.

Each command lives in the module named for what it works on. Commands import their heavy
dependencies (Prefect, torch, datasets) inside the command, so that ``keyslice --help``,
``keyslice sql`` and ``keyslice status`` answer in a second.
"""

from __future__ import annotations

import typer

from keyslice.cli import build, corpus, finetune, publish, segment, status
from keyslice.review.cli import review

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn CT studies and their reports into a Medical VQA dataset.")

app.command()(build.build)
app.command()(status.status)
app.command()(corpus.sql)
app.command()(corpus.check)
app.command()(segment.segment)
app.command()(build.demo)
app.command()(publish.publish)
app.command()(publish.stats)
app.command()(finetune.finetune)
app.command("eval")(finetune.evaluate)
app.command()(build.serve)
app.command()(corpus.compact)
app.command()(review)
