"""Keyed-hash pseudonyms for patient, study and series identifiers.

Raw identifiers (PatientID, StudyInstanceUID, folder names that are often accession
numbers) never enter the corpus. HMAC-SHA256 with a secret key makes the pseudonyms
stable across runs yet irreversible for anyone without the key; a plain hash would be
reversible by enumerating the (small) space of MRNs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from keyslice.errors import KeysliceError

KEY_ENV = "KEYSLICE_PSEUDONYM_KEY"


class MissingKeyError(KeysliceError):
    """Raised where a deliberate key is required (publishing) and none is configured."""


class KeyMismatchError(KeysliceError):
    """The key in use is not the key the corpus was built with: its pseudonyms would not match."""


@dataclass(frozen=True)
class Pseudonymizer:
    key: bytes
    source: str  # "env", "file" or "generated": publish insists on a deliberate key

    def __call__(self, kind: str, value: str, length: int = 16) -> str:
        """Pseudonym of ``value`` in namespace ``kind`` (e.g. ``"study"``, ``"patient"``)."""
        digest = hmac.new(self.key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return f"{kind[:2]}-{digest[:length]}"

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (HMAC of a fixed message). Every build records it in
        ``runs``, so publishing can prove that the corpus' pseudonyms were made with the key in hand."""
        return hmac.new(self.key, b"keyslice key fingerprint v1", hashlib.sha256).hexdigest()[:16]


def load_pseudonymizer(corpus_dir: Path, *, create: bool = True) -> Pseudonymizer:
    """Key from ``$KEYSLICE_PSEUDONYM_KEY``, else the corpus' own key file.

    A build without a configured key generates one into ``<corpus>/.keyslice/pseudonym.key``
    (mode 0600) so reruns give the same pseudonyms; keep that file private.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return Pseudonymizer(env.encode(), "env")
    key_file = Path(corpus_dir) / ".keyslice" / "pseudonym.key"
    if key_file.exists():
        return Pseudonymizer(key_file.read_bytes().strip(), "file")
    if not create:
        raise MissingKeyError(
            f"no pseudonymisation key: set {KEY_ENV} (and keep it secret) or build the corpus first"
        )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    tmp = key_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    os.replace(tmp, key_file)
    return Pseudonymizer(key, "generated")


FINGERPRINT_FILE = Path(".keyslice") / "key.fingerprint"


def recorded_fingerprints(corpus_dir: Path) -> set[str]:
    """Fingerprints of the keys a corpus was built with: its fingerprint file, else its ``runs`` rows."""
    import pyarrow.parquet as pq

    path = Path(corpus_dir) / FINGERPRINT_FILE
    if path.exists():
        return {path.read_text().strip()}
    found: set[str] = set()
    for run in sorted((Path(corpus_dir) / "tables" / "runs").glob("*.parquet")):
        try:
            column = pq.read_table(run, columns=["key_fingerprint"]).column("key_fingerprint")
        except Exception:  # noqa: BLE001 - a damaged run row proves nothing about the key
            continue
        found.update(v for v in column.to_pylist() if v)
    return found


def check_corpus_key(corpus_dir: Path, pseudonymize: Pseudonymizer) -> None:
    """Refuse a build whose key differs from the corpus' key, and remember the key's fingerprint.

    Another key gives every study, series and patient new pseudonyms: the same studies would be added
    again under new ids (one patient in two splits). Call while holding the corpus lock.
    """
    recorded = recorded_fingerprints(corpus_dir)
    if recorded and pseudonymize.fingerprint not in recorded:
        raise KeyMismatchError(
            f"the pseudonymisation key in use (fingerprint {pseudonymize.fingerprint}, from "
            f"{'$' + KEY_ENV if pseudonymize.source == 'env' else 'the corpus key file'}) is not the key this corpus "
            f"was built with (fingerprint {', '.join(sorted(recorded))}); building would add every study again "
            f"under new ids. Set {KEY_ENV} to the corpus' key (or unset it to use {corpus_dir}/.keyslice/pseudonym.key "
            f"when the corpus generated its own), or build into a new corpus folder")
    path = Path(corpus_dir) / FINGERPRINT_FILE
    if not path.exists():
        from keyslice.corpus.atomic import write_bytes_atomic

        write_bytes_atomic(path, pseudonymize.fingerprint.encode())
