"""On-disk embedding cache (a directory), float16.

Layout::

    DIR/images/<k[:2]>/<k>.npy    slice embeddings [n_slices, D] of one (series, model, window)
    DIR/texts/<m[:16]>/<t>.npy    one sentence embedding [D]

``k = sha256(cache_key, model_id, weights_sha256, window, preprocessing version, geometry)``
where ``geometry`` fingerprints the volume (shape, z positions), so a series that gained or
lost slices is re-encoded. ``m`` hashes (model_id, weights_sha256),
``t`` is the sha256 of the sentence. Files are written atomically (temp file + rename), so
concurrent builds and killed builds never leave a half-written entry; an unreadable entry
is treated as a miss. A small in-memory layer avoids re-reading during one build.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np


def _h(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def geometry_fingerprint(volume) -> str:
    z = np.round(np.asarray(volume.z_mm, dtype=np.float64), 3).tobytes()
    return _h(tuple(volume.shape), hashlib.sha256(z).hexdigest())


class EmbeddingCache:
    def __init__(self, directory: Path, memory_items: int = 32):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._mem_items = memory_items
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # ---------------------------------------------------------------- keys
    @staticmethod
    def image_key(cache_key: str, model_id: str, weights_sha256: str, window: str, preprocess_version: str,
                  geometry: str) -> str:
        return _h("img", cache_key, model_id, weights_sha256, window, preprocess_version, geometry)

    @staticmethod
    def model_key(model_id: str, weights_sha256: str) -> str:
        return _h("model", model_id, weights_sha256)

    # ---------------------------------------------------------------- io
    def _image_path(self, key: str) -> Path:
        return self.directory / "images" / key[:2] / f"{key}.npy"

    def _text_path(self, model_key: str, text: str) -> Path:
        return self.directory / "texts" / model_key[:16] / f"{text_hash(text)}.npy"

    def _read(self, path: Path) -> np.ndarray | None:
        key = str(path)
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        self._remember(key, arr)
        return arr

    def _remember(self, key: str, arr: np.ndarray) -> None:
        with self._lock:
            self._mem[key] = arr
            self._mem.move_to_end(key)
            while len(self._mem) > self._mem_items:
                self._mem.popitem(last=False)

    def _write(self, path: Path, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float16)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._remember(str(path), arr)

    # ---------------------------------------------------------------- public
    def get_images(self, key: str) -> np.ndarray | None:
        arr = self._read(self._image_path(key))
        if arr is None:
            self.misses += 1
        else:
            self.hits += 1
        return None if arr is None else arr.astype(np.float32)

    def put_images(self, key: str, emb: np.ndarray) -> None:
        self._write(self._image_path(key), emb)

    def get_text(self, model_key: str, text: str) -> np.ndarray | None:
        arr = self._read(self._text_path(model_key, text))
        return None if arr is None else arr.astype(np.float32)

    def has_text(self, model_key: str, text: str) -> bool:
        return str(self._text_path(model_key, text)) in self._mem or self._text_path(model_key, text).is_file()

    def put_text(self, model_key: str, text: str, emb: np.ndarray) -> None:
        self._write(self._text_path(model_key, text), emb)
