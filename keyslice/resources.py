"""Locate the versioned files that live beside the package (``schemas/``, ``prompts/``).

They sit at the repository root so that reviewers see them next to the code; an
editable install reads them there, a wheel install from ``<prefix>/share/keyslice``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """Return the directory of a resource family (``"schemas"`` or ``"prompts"``)."""
    for base in (_REPO_ROOT, Path(sys.prefix) / "share" / "keyslice"):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"keyslice resource folder {name!r} not found beside the package or under "
        f"{sys.prefix}/share/keyslice; reinstall keyslice with `pip install -e .`"
    )
