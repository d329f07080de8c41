"""Any slice of a reviewed series, rendered on demand from the studies the corpus was built from.

The corpus keeps only each finding's key-slice PNG and never a file path, so to show the slices
around the key slice (and to let the reader choose any slice) ``keyslice review --input STUDIES``
re-indexes the studies the way the build does: study folders are matched by their pseudonym
(:func:`keyslice.pipeline.studies.discover_studies` with the corpus key), series by theirs
(:func:`keyslice.dicom.index_study`, as step 3 does with :meth:`keyslice.dicom.StudyIndex.series_files`), and a slice is served only for a (study, series) pair that
the corpus' selections name and only when the series still has the slice count the selection was
made on. Rendered PNGs (the selection's window, no metadata chunks) are cached under
``CORPUS/cache/review/<study>/<series>/<window>/<index>.png``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from keyslice.corpus.atomic import write_bytes_atomic


class SeriesMismatchError(ValueError):
    """The studies folder no longer holds the series as the corpus saw it."""


class SliceSource:
    def __init__(self, corpus: Path, input_dir: Path, pseudonymize, *, max_volumes: int = 3) -> None:
        from keyslice.pipeline.studies import discover_studies

        self.cache = Path(corpus) / "cache" / "review"
        self.pseudonymize = pseudonymize
        self.studies = {s.study_id: s for s in discover_studies(Path(input_dir), pseudonymize)}
        self._records: dict[str, dict[str, object]] = {}   # study -> series -> index record
        self._volumes: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._max = max_volumes
        self._lock = threading.Lock()
        self._series_locks: dict[tuple[str, str], threading.Lock] = {}

    def has_study(self, study_id: str) -> bool:
        return study_id in self.studies

    def _record(self, study_id: str, series_id: str):
        from keyslice.dicom import index_study

        if study_id not in self._records:
            self._records[study_id] = {rec.row["series_id"]: rec for rec in
                                     index_study(self.studies[study_id].path, self.pseudonymize,
                                                 image_phase=False).series}
        record = self._records[study_id].get(series_id)
        if record is None:
            raise SeriesMismatchError(f"series {series_id} is not in study {study_id} of the studies folder")
        return record

    def _series_files(self, study_id: str, series_id: str) -> list[Path]:
        return self._record(study_id, series_id).files

    def series_row(self, study_id: str, series_id: str) -> dict:
        """The series as its DICOM headers in the studies folder describe it NOW (the series table's columns:
        ``burned_in_annotation``, ``sop_class``, ``image_type``, ``drop_reason``...), re-read rather than
        trusted from the corpus, since that is what the slices shown from this folder come from."""
        if study_id not in self.studies:
            raise SeriesMismatchError(f"study {study_id} is not in the studies folder")
        return self._record(study_id, series_id).row

    def volume(self, study_id: str, series_id: str, n_slices: int):
        """The decoded series (a few kept in memory, least recently used dropped)."""
        from keyslice.selector import load_volume

        key = (study_id, series_id)
        with self._lock:
            lock = self._series_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._volumes:
                    self._volumes.move_to_end(key)
                    return self._volumes[key]
            if study_id not in self.studies:
                raise SeriesMismatchError(f"study {study_id} is not in the studies folder")
            volume = load_volume(self._series_files(study_id, series_id))
            if volume.n_slices != n_slices:
                raise SeriesMismatchError(f"series {series_id} has {volume.n_slices} slices in the studies folder, "
                                          f"the corpus selected on {n_slices}: rebuild the corpus first")
            with self._lock:
                self._volumes[key] = volume
                while len(self._volumes) > self._max:
                    self._volumes.popitem(last=False)
            return volume

    def z_mm(self, study_id: str, series_id: str, n_slices: int) -> list[float]:
        return [float(z) for z in self.volume(study_id, series_id, n_slices).z_mm]

    def png(self, study_id: str, series_id: str, n_slices: int, index: int, window: str) -> bytes:
        from keyslice.selector import render_png

        if not 0 <= index < n_slices:
            raise IndexError(f"slice {index} is outside the series (0..{n_slices - 1})")
        path = self.cache / study_id / series_id / window / f"{index}.png"
        if path.exists():
            return path.read_bytes()
        data = render_png(self.volume(study_id, series_id, n_slices), index, window)
        write_bytes_atomic(path, data)
        return data
