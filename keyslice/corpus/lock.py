"""One build at a time per corpus.

The lock is an ``fcntl`` lock, so the kernel releases it when the holder dies (even by
SIGKILL): a crashed build never leaves a stale lock behind. While holding it, a build
may delete the temporary files a killed build left half-written.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class CorpusLockedError(RuntimeError):
    pass


@contextmanager
def corpus_lock(corpus_dir: Path) -> Iterator[None]:
    path = Path(corpus_dir) / ".keyslice" / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CorpusLockedError(
                f"another keyslice build is writing {corpus_dir}; wait for it to finish or stop it"
            ) from exc
        yield
    finally:
        os.close(fd)


def sweep_temporaries(corpus_dir: Path) -> int:
    """Delete ``.*.tmp`` files left by a killed build; call only while holding the lock."""
    removed = 0
    for tmp in Path(corpus_dir).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
