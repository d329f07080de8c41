"""``python -m keyslice.cli``: the same command line as the ``keyslice`` entry point."""

from keyslice.cli import app

if __name__ == "__main__":
    app()
