"""``python -m keyslice.cli``: the same command line as the ``keyslice`` entry point."""

from keyslice.cli import app

app()
