"""Awkward files, built in tmp_path from the real shared files: no preamble, duplicates,
non-DICOM named .dcm, truncated files, several series mixed in one folder."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from keyslice.dicom import NotDicomError, index_study, read_header
from keyslice.errors import DicomReadError
from keyslice.pseudonym import Pseudonymizer
from tests.real_data import DATA

SIEMENS = DATA / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom"
PHILIPS_AX = DATA / "philips_phantom_study" / "S21570" / "S2010"
PHILIPS_LOC = DATA / "philips_phantom_study" / "S21570" / "S1000" / "I10"
GE_TILT = DATA / "ge_head_ct_tilt"
DCMQI = DATA / "dcmqi_ct3slice" / "ct-3slice"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")
PS = Pseudonymizer(b"test-key", "env")
READERS = ["fast", "pydicom"]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _strip_preamble(src: Path, dst: Path, *, drop_meta: bool = False) -> Path:
    raw = src.read_bytes()
    assert raw[128:132] == b"DICM"
    body = raw[132:]
    if drop_meta:  # also remove the file meta group: a bare dataset (implicit VR in the dcmqi files)
        (meta_len,) = struct.unpack_from("<I", body, 8)
        body = body[12 + meta_len:]
    dst.write_bytes(body)
    return dst


@pytest.mark.parametrize("reader", READERS)
def test_file_without_preamble_is_read(tmp_path, reader):
    src = sorted(GE_TILT.glob("*.dcm"))[0]
    f = _strip_preamble(src, tmp_path / "nopreamble.dcm")
    h = read_header(f, reader)
    ref = read_header(src, reader)
    assert not h.has_preamble and ref.has_preamble
    assert h.values == ref.values and h.truncated is None


@pytest.mark.parametrize("reader", READERS)
def test_bare_dataset_without_meta_is_read(tmp_path, reader):
    srcs = sorted(DCMQI.glob("*.dcm"))
    for i, src in enumerate(srcs):
        _strip_preamble(src, tmp_path / f"bare{i}", drop_meta=True)
    idx = index_study(tmp_path, PS, reader=reader)
    assert not idx.skipped_files
    (s,) = idx.series
    assert s.row["kept"] and s.row["n_slices"] == 3 and s.row["transfer_syntax"] is None
    ref = index_study(DCMQI, PS, reader=reader).series[0].row
    assert {k: v for k, v in s.row.items() if k != "transfer_syntax"} == {
        k: v for k, v in ref.items() if k != "transfer_syntax"}


@pytest.mark.parametrize("reader", READERS)
def test_duplicate_instance_dropped_with_warning(tmp_path, reader):
    files = sorted(GE_TILT.glob("*.dcm"))[:5]
    for f in files:
        _copy(f, tmp_path / "a" / f.name)
    _copy(files[2], tmp_path / "b" / "copy_of_03.dcm")  # same SOPInstanceUID twice
    idx = index_study(tmp_path, PS, reader=reader)
    (s,) = idx.series
    assert s.row["n_instances"] == 5 and s.row["n_slices"] == 5 and len(s.files) == 5
    assert any("1 duplicate instance(s) dropped (same SOPInstanceUID)" in w for w in s.row["warnings"])


@pytest.mark.parametrize("reader", READERS)
def test_duplicate_in_fallback_mode(tmp_path, reader):
    files = sorted(SIEMENS.iterdir())[:4]
    for f in files:
        _copy(f, tmp_path / f.name)
    _copy(files[0], tmp_path / "dup")  # empty SOPInstanceUID: same position + InstanceNumber
    idx = index_study(tmp_path, PS, reader=reader)
    (s,) = idx.series
    assert s.row["grouping"] == "fallback" and s.row["n_instances"] == 4
    assert any("duplicate" in w and "position" in w for w in s.row["warnings"])


@pytest.mark.parametrize("reader", READERS)
def test_non_dicom_named_dcm_is_skipped(tmp_path, reader):
    for f in sorted(GE_TILT.glob("*.dcm"))[:3]:
        _copy(f, tmp_path / f.name)
    (tmp_path / "notes.dcm").write_text("this is not a DICOM file\n" * 20)
    (tmp_path / "random.dcm").write_bytes(os.urandom(4096))
    # worst case for force=True: starts like a group-0008 element, then garbage
    (tmp_path / "tricky.dcm").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + os.urandom(2000))
    idx = index_study(tmp_path, PS, reader=reader)
    skipped = dict(idx.skipped_files)
    assert set(skipped) == {"notes.dcm", "random.dcm", "tricky.dcm"}, skipped
    assert "not DICOM" in skipped["notes.dcm"]
    assert idx.n_files == 6 and idx.n_dicom == 3 and idx.series[0].row["n_slices"] == 3
    with pytest.raises(NotDicomError):
        read_header(tmp_path / "notes.dcm", reader)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("source", ["ge_native", "siemens_j2k"])
def test_truncated_file_is_skipped(tmp_path, reader, source):
    files = sorted(GE_TILT.glob("*.dcm"))[:4] if source == "ge_native" else sorted(SIEMENS.iterdir())[:4]
    for f in files:
        _copy(f, tmp_path / f.name)
    victim = tmp_path / files[1].name
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - 3000])  # cut inside the pixel data
    h = read_header(victim, reader)
    assert h.truncated, h
    idx = index_study(tmp_path, PS, reader=reader)
    skipped = dict(idx.skipped_files)
    assert list(skipped) == [files[1].name] and skipped[files[1].name].startswith("truncated DICOM")
    (s,) = idx.series
    assert s.row["n_instances"] == 3
    assert any("1 truncated file(s) excluded" in w for w in s.row["warnings"])


@pytest.mark.parametrize("reader", READERS)
def test_file_cut_inside_header(tmp_path, reader):
    src = sorted(GE_TILT.glob("*.dcm"))[0]
    (tmp_path / "cut.dcm").write_bytes(src.read_bytes()[:700])
    _copy(sorted(GE_TILT.glob("*.dcm"))[1], tmp_path / "ok.dcm")
    idx = index_study(tmp_path, PS, reader=reader)
    skipped = dict(idx.skipped_files)
    assert "cut.dcm" in skipped and "ok.dcm" not in skipped


def test_no_dicom_at_all_raises(tmp_path):
    (tmp_path / "report.txt").write_text("Findings: none.")
    (tmp_path / "a.dcm").write_text("nope")
    with pytest.raises(DicomReadError, match=r"tried 2 file\(s\).*a\.dcm"):
        index_study(tmp_path, PS)
    with pytest.raises(DicomReadError):
        index_study(tmp_path / "missing", PS)


@pytest.mark.parametrize("reader", READERS)
def test_mixed_series_in_one_folder(tmp_path, reader):
    """Philips localizer + axial, GE tilted head and dcmqi slices, all flat in one folder."""
    _copy(PHILIPS_LOC, tmp_path / "x001")
    for i, f in enumerate(sorted(PHILIPS_AX.glob("I*"))):
        _copy(f, tmp_path / f"x1{i:02d}")
    for i, f in enumerate(sorted(GE_TILT.glob("*.dcm"))):
        _copy(f, tmp_path / f"x2{i:02d}")
    for i, f in enumerate(sorted(DCMQI.glob("*.dcm"))):
        _copy(f, tmp_path / f"x3{i:02d}")
    idx = index_study(tmp_path, PS, reader=reader)
    got = sorted((s.row["n_slices"], s.row["kept"], s.row["drop_reason"]) for s in idx.series)
    assert got == [(1, False, "localizer"), (3, True, None), (28, True, None), (28, True, None)]


def test_min_slices_is_configurable():
    idx = index_study(DCMQI.parent, PS, min_slices=4)
    ct = [s for s in idx.series if s.row["modality"] == "CT"][0]
    assert ct.row["drop_reason"] == "too_few_slices"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the flipped bytes
@pytest.mark.parametrize("reader", READERS)
def test_corrupted_headers_never_crash_the_index(tmp_path, reader):
    """Seeded byte flips in the header region of real files: each file is read or skipped, never raises."""
    import random

    rng = random.Random(1234)
    srcs = sorted(GE_TILT.glob("*.dcm"))[:3] + sorted(SIEMENS.iterdir())[:2] + sorted(DCMQI.glob("*.dcm"))[:1]
    n = 0
    for src in srcs:
        raw = src.read_bytes()
        for k in range(15):
            b = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(132, 3000)] = rng.randrange(256)
            (tmp_path / f"c{n:03d}").write_bytes(bytes(b))
            n += 1
    idx = index_study(tmp_path, PS, reader=reader, image_phase=False)
    assert idx.n_files == n and idx.n_dicom + len(idx.skipped_files) >= n
    for s in idx.series:
        assert s.row["series_id"].startswith("se-")


# --------------------------------------------------------------------------- headers only, never pixels


def _garble_encapsulated_fragments(src: Path, dst: Path, seed: int) -> Path:
    """Copy a JPEG 2000 file with every pixel fragment replaced by random bytes of the same length.

    The item structure (offset table, fragment lengths, sequence delimiter) is kept, so the
    file is still well-formed DICOM; only the compressed image stream is garbage.
    """
    import random

    rng = random.Random(seed)
    raw = bytearray(src.read_bytes())
    start = raw.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    assert start > 0, "no encapsulated Pixel Data element"
    pos = start + 12
    first = True
    while True:
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        assert (group, elem) == (0xFFFE, 0xE000)
        if not first:  # leave the basic offset table alone
            raw[pos:pos + length] = rng.randbytes(length)
        first = False
        pos += length
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("reader", READERS)
def test_garbage_pixel_data_indexes_like_the_original(tmp_path, reader):
    """Pixels are never decoded at this step: a series whose J2K streams are random bytes
    gives exactly the same series row (geometry, phase, keep) as the real one."""
    import pydicom

    srcs = sorted(SIEMENS.iterdir())
    for i, src in enumerate(srcs):
        _garble_encapsulated_fragments(src, tmp_path / src.name, seed=i)
    with pytest.raises(Exception):  # the garbage is real: a full read cannot decode it
        pydicom.dcmread(tmp_path / srcs[0].name).pixel_array
    got = index_study(tmp_path, PS, reader=reader)
    ref = index_study(SIEMENS, PS, reader=reader)
    assert not got.skipped_files and got.n_dicom == 20
    assert [s.row for s in got.series] == [s.row for s in ref.series]
    assert [[p.name for p in s.files] for s in got.series] == [[p.name for p in s.files] for s in ref.series]


@pytest.mark.parametrize("reader", READERS)
def test_index_never_touches_pixel_decoding(monkeypatch, reader):
    """Every real set indexes with pydicom's pixel access disabled (any call would raise)."""
    import pydicom

    def boom(self, *a, **k):
        raise AssertionError("pixel data decoded during header indexing")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    monkeypatch.setattr(pydicom.dataset.Dataset, "convert_pixel_data", boom)
    monkeypatch.setattr(pydicom.dataset.Dataset, "decompress", boom)
    for folder in (SIEMENS, PHILIPS_AX.parent.parent.parent, GE_TILT, DCMQI.parent):
        idx = index_study(folder, PS, reader=reader, image_phase=False)
        assert idx.kept(), folder.name


# --------------------------------------------------------------------------- missing UIDs, parallel reading


def _rewrite(src: Path, dst: Path, drop: tuple[str, ...] = (), blank: tuple[str, ...] = ()) -> None:
    """Copy a real file with some elements removed or emptied (pixel bytes copied untouched)."""
    import pydicom

    ds = pydicom.dcmread(src)
    for kw in drop:
        if kw in ds:
            delattr(ds, kw)
    for kw in blank:
        setattr(ds, kw, "")
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_philips_study_without_uids_groups_by_fallback_key(tmp_path, how):
    """Study/Series/SOP Class UIDs removed (or emptied) from every file of the real Philips study:
    the fallback key (study date/time, series number/description, frame of reference,
    orientation...) still finds the same three series with the same keep/drop decisions."""
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
    study = PHILIPS_AX.parent
    for src in sorted(p for p in study.rglob("I*") if p.is_file()):
        dst = tmp_path / src.relative_to(study)
        if how == "missing":
            _rewrite(src, dst, drop=uids)
        else:
            _rewrite(src, dst, blank=uids)
    got = index_study(tmp_path, PS)
    ref = index_study(study, PS)
    assert all(s.row["grouping"] == "fallback" for s in got.series)
    key = ("series_number", "n_instances", "n_slices", "kept", "drop_reason", "orientation", "slice_spacing_mm",
           "z_min_mm", "z_max_mm", "has_rescale")
    assert sorted(tuple(s.row[k] for k in key) for s in got.series) == \
        sorted(tuple(s.row[k] for k in key) for s in ref.series)
    ax = next(s for s in got.series if s.row["kept"])
    assert [p.name for p in ax.files] == [p.name for p in ref.kept()[0].files]


def test_read_headers_keeps_order_and_reports_each_files_error(tmp_path, monkeypatch):
    """Each path gets its header or the reason it is skipped, in order: a FIFO is refused without
    blocking, a reader bug is that file's error; every file is parsed in the calling thread."""
    import threading

    import keyslice.dicom.headers as headers_mod
    from keyslice.dicom.headers import read_headers

    good = sorted(GE_TILT.glob("*.dcm"))[:6]
    os.mkfifo(tmp_path / "pipe.dcm")
    paths = [good[0], tmp_path / "pipe.dcm", good[1], *good[2:]]
    threads: set[int] = set()
    real_read = headers_mod.read_header
    monkeypatch.setattr(headers_mod, "read_header", lambda *a: threads.add(threading.get_ident()) or real_read(*a))
    out = list(read_headers(paths))
    assert threads == {threading.get_ident()}
    monkeypatch.setattr(headers_mod, "read_header", real_read)
    assert [type(h).__name__ for h in out] == ["Header", "NotDicomError"] + ["Header"] * 5
    assert "named pipe" in str(out[1])
    assert [h.text("SOPInstanceUID") for h in out if not isinstance(h, NotDicomError)] == \
        [read_header(p).text("SOPInstanceUID") for p in good]

    real_walk = headers_mod._walk

    def broken(buf, pos, explicit, stop_group, want, out, depth=0):
        if stop_group is None and depth == 0:
            raise ZeroDivisionError("reader bug")
        return real_walk(buf, pos, explicit, stop_group, want, out, depth)

    monkeypatch.setattr(headers_mod, "_walk", broken)
    bug = next(read_headers(good[:2]))
    assert isinstance(bug, NotDicomError) and "ZeroDivisionError: reader bug" in str(bug)
