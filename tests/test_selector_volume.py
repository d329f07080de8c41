"""Reading real CT series into a Volume: sorting, HU, JPEG 2000, NIfTI, and the bad-input policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from keyslice.errors import DicomReadError
from keyslice.selector import load_volume, volume_from_nifti
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SIEMENS_J2K = REF / "example_ct_dicom"
PHILIPS = DATA / "philips_phantom_study" / "S21570"
CT3 = DATA / "dcmqi_ct3slice" / "ct-3slice"
GE_TILT = DATA / "ge_head_ct_tilt"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_siemens_jpeg2000_series_sorted_by_position():
    vol = load_volume(files(SIEMENS_J2K))
    assert vol.shape == (20, 512, 512)
    assert pydicom.dcmread(vol.files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    # Position step is 2 mm although SliceThickness says 3 mm (the README's trap).
    assert np.allclose(np.diff(vol.z_mm), 2.0) and vol.slice_thickness == 3.0
    # Sorted by position, not by InstanceNumber (which runs the other way here).
    assert vol.instance_numbers[0] > vol.instance_numbers[-1]
    for k, f in enumerate(vol.files):
        assert float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) == pytest.approx(vol.z_mm[k])
    hu = vol.hu
    assert hu.dtype == np.float32 and hu.min() == -1024 and hu.max() > 1000
    # HU = raw * slope + intercept, decoded from JPEG 2000 independently here.
    ds = pydicom.dcmread(vol.files[7])
    assert np.array_equal(hu[7], ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert vol.skipped == [] and vol.valid.all()
    # Affine maps voxel (i=col, j=row, k) to the LPS position of the slice.
    for k in (0, 19):
        assert np.allclose(vol.affine @ [0, 0, k, 1], np.r_[vol.positions[k], 1])
    i, j = 100, 200
    ds0 = pydicom.dcmread(vol.files[0], stop_before_pixels=True)
    expect = np.asarray(ds0.ImagePositionPatient, float) + i * ds0.PixelSpacing[1] * np.asarray(ds0.ImageOrientationPatient[:3], float) \
        + j * ds0.PixelSpacing[0] * np.asarray(ds0.ImageOrientationPatient[3:], float)
    assert np.allclose(vol.affine @ [i, j, 0, 1], np.r_[expect, 1])


def test_philips_axial_series_skips_dirfile():
    vol = load_volume(files(PHILIPS / "S2010"))
    assert vol.shape == (28, 512, 512)
    assert ("DIRFILE", "DICOMDIR (media storage directory), not an image instance") in vol.skipped
    assert np.allclose(np.diff(vol.z_mm), 5.0)
    assert vol.instance_numbers == sorted(vol.instance_numbers)


def test_rgb_secondary_capture_is_skipped():
    vol = load_volume(files(PHILIPS / "S4010"))
    reasons = dict(vol.skipped)
    assert any("not grayscale" in r for r in reasons.values())


def test_dcmqi_three_slices_implicit_vr():
    vol = load_volume(files(CT3))
    assert vol.shape == (3, 512, 512)
    assert np.allclose(np.diff(vol.z_mm), 1.0)
    assert vol.instance_numbers == [3, 2, 1]  # sorted by position, not by number


def test_gantry_tilt_uses_exact_positions():
    vol = load_volume(files(GE_TILT))
    assert vol.shape[0] == 28
    assert {name for name, _ in vol.skipped} >= {"LICENSE", "README.upstream.md"}
    assert np.all(np.diff(vol.z_mm) > 0)
    assert vol.normal[1] != 0  # tilted: the normal is not the z axis
    for k in range(vol.n_slices):  # positions are exact per slice, whatever the spacing
        ds = pydicom.dcmread(vol.files[k], stop_before_pixels=True)
        assert np.allclose(vol.positions[k], np.asarray(ds.ImagePositionPatient, float))


def test_eager_equals_streamed():
    a = load_volume(files(CT3), decode="eager")
    b = load_volume(files(CT3), decode="stream")
    assert a._hu is not None and b._hu is None  # streamed: nothing decoded yet
    assert np.array_equal(b.slab(1, 3), a.hu[1:3]) and b._hu is None
    assert np.array_equal(a.hu, b.hu)


def _copy_series(src: Path, dst: Path) -> list[Path]:
    dst.mkdir()
    out = []
    for f in files(src):
        shutil.copy(f, dst / f.name)
        out.append(dst / f.name)
    return out


def test_one_corrupt_jpeg2000_slice_is_blanked_and_recorded(tmp_path):
    fs = _copy_series(SIEMENS_J2K, tmp_path / "s")
    ref = load_volume(files(SIEMENS_J2K))
    bad = ref.files[5].name
    _break_j2k(tmp_path / "s" / bad)  # header intact, JPEG 2000 codestream destroyed
    vol = load_volume(fs)
    assert vol.shape == ref.shape and np.array_equal(vol.z_mm, ref.z_mm)
    hu = vol.hu
    assert not vol.valid[5] and vol.valid.sum() == 19
    assert np.all(hu[5] == -1024)
    assert np.array_equal(hu[4], ref.hu[4])
    assert any(name == bad and reason.startswith("pixel data cannot be decoded") for name, reason in vol.skipped)


def test_truncated_and_non_dicom_files_are_skipped(tmp_path):
    fs = _copy_series(PHILIPS / "S2010", tmp_path / "s")
    victim = tmp_path / "s" / "I100"
    victim.write_bytes(victim.read_bytes()[:5000])  # header intact, pixel data cut
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    vol = load_volume(fs + [tmp_path / "s" / "notes.txt"])
    assert vol.shape[0] == 27
    reasons = dict(vol.skipped)
    assert "I100" in reasons and "notes.txt" in reasons
    assert reasons["notes.txt"] == "not DICOM (suffix .txt)" or reasons["notes.txt"].startswith("not DICOM")
    assert reasons["I100"].startswith("truncated pixel data")


def test_series_of_one_slice():
    vol = load_volume([files(CT3)[0]])
    assert vol.shape == (1, 512, 512)
    assert vol.affine[2, 2] == pytest.approx(1.25)  # slice step falls back to SliceThickness
    assert vol.hu.shape == (1, 512, 512)


def test_all_bad_or_mixed_sizes_raise(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DicomReadError, match="no readable image slice"):
        load_volume([tmp_path / "a.txt", PHILIPS / "S2010" / "DIRFILE"])
    with pytest.raises(DicomReadError, match="empty series"):
        load_volume([])
    with pytest.raises(DicomReadError, match="mixes image sizes"):
        load_volume(files(CT3) + [PHILIPS / "S4010" / "I10"])
    with pytest.raises(DicomReadError, match="orientations"):
        load_volume(files(CT3) + files(GE_TILT)[:3])


def _break_j2k(path: Path) -> None:
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    ds = pydicom.dcmread(path)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame[:16] + bytes(len(frame) - 16)])
    ds.save_as(path)


def test_all_slices_undecodable_raises(tmp_path):
    (tmp_path / "s").mkdir()
    fs = []
    for f in files(SIEMENS_J2K)[:3]:
        shutil.copy(f, tmp_path / "s" / f.name)
        _break_j2k(tmp_path / "s" / f.name)
        fs.append(tmp_path / "s" / f.name)
    vol = load_volume(fs)  # headers are fine: returns; pixels are decoded when used
    with pytest.raises(DicomReadError, match="no slice of the series could be decoded"):
        vol.hu


def test_truncated_uncompressed_everywhere_raises(tmp_path):
    fs = _copy_series(CT3, tmp_path / "s")
    for f in fs:
        ds = pydicom.dcmread(f)
        ds.BitsAllocated = 32  # pixel data now too short for the header: truncated
        ds.save_as(f)
    with pytest.raises(DicomReadError, match="truncated pixel data"):
        load_volume(fs)


def test_volume_from_nifti_geometry():
    import nibabel as nib

    img = nib.load(str(REF / "example_ct.nii.gz"))
    vol = volume_from_nifti(REF / "example_ct.nii.gz")
    assert vol.shape == (112, 101, 122) and vol.pixel_spacing == (3.0, 3.0)
    data = np.asanyarray(img.dataobj)
    # The affine of the Volume (LPS) and the NIfTI's (RAS) agree on every voxel's world position.
    for (i, j, k) in [(0, 0, 0), (10, 20, 30), (121, 100, 111)]:
        ras = img.affine @ [i, j, k, 1]
        lps = np.array([-ras[0], -ras[1], ras[2]])
        vi, vj, vk = np.rint(np.linalg.inv(vol.affine) @ np.r_[lps, 1])[:3].astype(int)
        assert vol.hu[vk, vj, vi] == data[i, j, k]
    assert np.all(np.diff(vol.z_mm) == pytest.approx(3.0))
    # DICOM-like orientation: columns toward the patient's left, rows toward posterior.
    assert vol.orientation[0] > 0.99 and vol.orientation[4] > 0.99


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "DeflatedExplicitVRLittleEndian"])
def test_other_transfer_syntaxes_give_the_same_hu(tmp_path, syntax):
    """The 3 real GE slices re-encoded (losslessly) in other transfer syntaxes by pydicom's own
    encoders decode to exactly the HU of the uncompressed originals."""
    import pydicom.uid

    uid = getattr(pydicom.uid, syntax)
    ref = load_volume(files(CT3), decode="eager")
    (tmp_path / "s").mkdir()
    for f in files(CT3):
        ds = pydicom.dcmread(f)
        if uid.is_compressed:
            ds.compress(uid)
        else:
            ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(tmp_path / "s" / f.name, enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "s" / files(CT3)[0].name).file_meta.TransferSyntaxUID == uid
    vol = load_volume(files(tmp_path / "s"))
    assert np.array_equal(vol.hu, ref.hu) and vol.valid.all() and vol.skipped == []
    assert np.array_equal(vol.z_mm, ref.z_mm)
