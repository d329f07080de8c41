"""``keyslice segment``: TotalSegmentator masks for studies that shipped none, written under a masks root
where ``find_masks`` and the next build read them. Without TotalSegmentator weights (this machine) the
real runner stops each study with a 'weights missing' error; the write path runs with a segmenter
built here that writes a SYNTHETIC liver labelmap on the CT's own grid."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from keyslice.errors import ModelWeightsMissingError
from keyslice.pipeline.organ_masks import segment_studies
from keyslice.selector import (OrganMasks, find_masks, load_volume, segment_volume, totalsegmentator_segmenter,
                               volume_from_nifti)
from keyslice.selector.totalseg import LABELMAP_NAME, check_totalsegmentator, weights_dir
from keyslice.selector.ts_labels import TOTAL_LABELS
from tests.real_data import DATA

REPO = Path(__file__).resolve().parents[1]
REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
LIVER = next(v for v, name in TOTAL_LABELS.items() if name == "liver")
SLAB = (10, 14)  # slices of the SYNTHETIC liver on the phantom's 28-slice series


@pytest.fixture
def no_totalsegmentator(monkeypatch):
    """``import totalsegmentator`` fails, as on a machine without the optional extra."""
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)


@pytest.fixture
def fake_totalsegmentator(monkeypatch, tmp_path):
    """An importable ``totalsegmentator.python_api`` that records its calls and writes nothing."""
    calls = []
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "totalsegmentator", types.ModuleType("totalsegmentator"))
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "tshome"))
    return calls


def liver_slab_segmenter(calls: list | None = None):
    """A segmenter built by the test: liver (its TotalSegmentator label) on slices SLAB of the CT it is given,
    on that CT's grid and affine; it records the CT's shape."""

    def segment(ct_nifti: Path, labelmap: Path) -> None:
        ct = nib.load(str(ct_nifti))
        data = np.zeros(ct.shape, dtype=np.uint8)
        data[:, :, SLAB[0]:SLAB[1] + 1] = LIVER
        nib.save(nib.Nifti1Image(data, ct.affine), str(labelmap))
        if calls is not None:
            calls.append(ct.shape)

    return segment


# --------------------------------------------------------------------------- weights and install checks


def test_not_installed_says_what_to_install(no_totalsegmentator):
    with pytest.raises(ModelWeightsMissingError, match=r"pip install 'keyslice\[totalsegmentator\]'"):
        check_totalsegmentator()


def test_weights_missing_names_the_folder_and_the_download(fake_totalsegmentator, tmp_path):
    with pytest.raises(ModelWeightsMissingError, match="totalseg_download_weights -t total_fast") as info:
        check_totalsegmentator(fast=True)
    assert str(tmp_path / "tshome" / "nnunet" / "results") in str(info.value)
    assert "TOTALSEG_WEIGHTS_PATH" in str(info.value)


def test_weights_are_looked_up_where_totalsegmentator_looks(fake_totalsegmentator, tmp_path, monkeypatch):
    results = tmp_path / "tshome" / "nnunet" / "results"
    (results / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir(parents=True)
    check_totalsegmentator(fast=True)  # the 3 mm model is there
    with pytest.raises(ModelWeightsMissingError, match="Dataset291, Dataset292, Dataset293, Dataset294, Dataset295"):
        check_totalsegmentator(fast=False)  # the five 1.5 mm parts are not
    elsewhere = tmp_path / "weights"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(elsewhere))  # wins over TOTALSEG_HOME_DIR, as in TotalSegmentator
    assert weights_dir() == elsewhere
    with pytest.raises(ModelWeightsMissingError, match=str(elsewhere)):
        check_totalsegmentator(fast=True)


def test_real_segmenter_calls_the_python_api_only_with_weights(fake_totalsegmentator, tmp_path):
    segment = totalsegmentator_segmenter(fast=True, device="cpu")
    with pytest.raises(ModelWeightsMissingError):
        segment(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")
    assert fake_totalsegmentator == []  # no run (and no download attempt) without weights
    (tmp_path / "tshome" / "nnunet" / "results" / "Dataset297_x").mkdir(parents=True)
    segment(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")
    (args, kwargs), = fake_totalsegmentator
    assert args == (str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"))
    assert kwargs["ml"] is True and kwargs["fast"] is True and kwargs["device"] == "cpu" and kwargs["task"] == "total"


# --------------------------------------------------------------------------- one series


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")
def test_segment_volume_writes_a_world_consistent_ct_and_the_labelmap(tmp_path):
    """The CT handed to the segmenter is the DICOM series in world coordinates (RAS on disk, LPS in
    memory); the labelmap lands where find_masks reads it, with its label map."""
    siemens = load_volume(sorted((REF / "example_ct_dicom").iterdir()))
    seen = {}

    def segmenter(ct_nifti: Path, labelmap: Path) -> None:
        back = volume_from_nifti(ct_nifti)
        seen["back"] = back
        liver_slab_segmenter()(ct_nifti, labelmap)

    masks = segment_volume(siemens, tmp_path / "study_masks", segmenter)
    back = seen["back"]
    assert back.shape == siemens.shape and np.allclose(back.z_mm, siemens.z_mm)
    assert np.array_equal(back.hu, siemens.hu)
    reference = OrganMasks.from_nifti(REF / "example_seg_dicom.nii.gz")
    for label in ("pancreas", "rib_left_6"):
        assert reference.z_range([label], back) == pytest.approx(reference.z_range([label], siemens))
    assert sorted(p.name for p in (tmp_path / "study_masks").iterdir()) == ["totalseg_seg.json", LABELMAP_NAME]
    assert json.loads((tmp_path / "study_masks" / "totalseg_seg.json").read_text())[str(LIVER)] == "liver"
    z = np.asarray(siemens.z_mm)
    assert masks.z_range(["liver"], siemens) == pytest.approx((z[SLAB[0]], z[SLAB[1]]))
    found = find_masks(tmp_path / "study_masks")
    assert found is not None and found.z_range(["liver"], siemens) == pytest.approx((z[SLAB[0]], z[SLAB[1]]))


def test_a_labelmap_off_the_ct_grid_is_refused_and_nothing_is_written(tmp_path, data_dir):
    siemens = load_volume(sorted((REF / "example_ct_dicom").iterdir()))

    def wrong_grid(ct_nifti: Path, labelmap: Path) -> None:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(labelmap))

    from keyslice.errors import MaskError

    with pytest.raises(MaskError, match="not the CT's"):
        segment_volume(siemens, tmp_path / "m", wrong_grid)
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- studies, the command, the build


def test_command_without_weights_reports_each_study_and_goes_on(sample_studies, tmp_path):
    """The real runner on the sample studies: those with masks are skipped, each other one gets the
    'weights missing' error, the summary counts them, exit 1; in a pipe the lines carry no markup."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(PYTHONPATH=str(REPO), TOTALSEG_WEIGHTS_PATH=str(tmp_path / "no_weights"), TERM="xterm-256color")
    done = subprocess.run([sys.executable, "-m", "keyslice.cli", "segment", "--input", str(sample_studies),
                           "--masks", str(tmp_path / "masks"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = dict((line.split("\t")[0], line.split("\t")[1:]) for line in done.stdout.splitlines())
    assert sorted(lines) == ["abdomen_siemens_j2k", "colonography_ge_3slice", "head_ge_tilt", "phantom_philips_mixed"]
    assert lines["abdomen_siemens_j2k"][0] == "skipped" and lines["colonography_ge_3slice"][0] == "skipped"
    for failed in ("head_ge_tilt", "phantom_philips_mixed"):
        status, detail = lines[failed]
        assert status == "failed" and detail.startswith("ModelWeightsMissingError: TotalSegmentator")
        assert "TOTALSEG_WEIGHTS_PATH" in detail and "totalseg_download_weights" in detail
    assert "\x1b[" not in done.stdout + done.stderr
    assert "4 studies: 0 segmented, 2 already had masks, 2 failed" in done.stderr
    assert not (tmp_path / "masks").exists()  # a failed study leaves nothing under the masks root


def test_segmented_masks_are_found_and_restrict_the_build(sample_studies, tmp_path, tiny_model_dir, monkeypatch):
    """The write path with an injected segmenter: the labelmap goes under the masks root (the input is
    not touched), a second run skips the study, find_masks reads it, a build given the root selects
    the liver finding's key slice inside the SYNTHETIC liver's z-range, and publishing grounds the liver
    finding with those masks (the root the build recorded, unless publish names another)."""
    import keyslice
    from keyslice.pseudonym import KEY_ENV

    monkeypatch.setenv(KEY_ENV, "keyslice-segment-test-key")
    from keyslice.corpus.sql import query
    from keyslice.dicom import index_study
    from keyslice.pseudonym import Pseudonymizer

    study = sample_studies / "phantom_philips_mixed"
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / study.name).symlink_to(study)
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    masks_root = tmp_path / "masks"
    shapes = []
    outcomes = segment_studies(inp, masks_root, liver_slab_segmenter(shapes))
    (outcome,) = outcomes
    assert outcome.status == "segmented", outcome.detail
    assert outcome.labelmap == masks_root / study.name / LABELMAP_NAME
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before  # the input is read only
    assert find_masks(study) is None  # the study itself ships no masks...
    found = find_masks(study, masks_root / study.name)  # ...the masks root has them

    index = index_study(study, Pseudonymizer(b"k" * 32, "env"), image_phase=False)
    (series,) = index.kept()
    assert shapes[0][2] == len(series.files)  # the segmenter saw the whole series
    volume = load_volume(series.files)
    z = np.asarray(volume.z_mm)
    assert found.z_range(["liver"], volume) == pytest.approx((z[SLAB[0]], z[SLAB[1]]))
    assert re.match(r"\d+ labels on \d+ of \d+ finding\(s\); ", outcome.detail), outcome.detail

    again = segment_studies(inp, masks_root, liver_slab_segmenter(shapes))
    assert [o.status for o in again] == ["skipped"] and len(shapes) == 1
    redo = segment_studies(inp, masks_root, liver_slab_segmenter(shapes), overwrite=True)
    assert [o.status for o in redo] == ["segmented"] and len(shapes) == 2

    out = tmp_path / "corpus"
    result = keyslice.build(inp, out, model=str(tiny_model_dir), runner="sequential", masks_dir=str(masks_root))
    assert result["n_failed"] == 0
    rows = query(out, "SELECT f.text, s.top1_index, s.restricted_to, s.z_range_mm FROM selections s "
                      "JOIN findings f USING (finding_id) WHERE list_contains(f.ts_labels, 'liver')").to_pylist()
    assert rows, "the report's liver sentence must get a key slice"
    for row in rows:
        assert "liver" in row["restricted_to"]
        assert row["z_range_mm"] == pytest.approx([min(z[SLAB[0]], z[SLAB[1]]), max(z[SLAB[0]], z[SLAB[1]])])
        assert SLAB[0] <= row["top1_index"] <= SLAB[1]

    from keyslice.publish import publish_corpus
    from tests.publish_fixtures import load_config

    def grounded_labels(dest: Path, **options) -> dict[str, list[str]]:
        publish_corpus(out, "keyslice/segment-test", dry_run_dir=dest, input_dir=inp, grounding=True,
                       log=lambda m: None, **options)
        return {r["finding_id"]: r["mask_labels"] for part in load_config(dest, "findings", tmp_path / "hf").values()
                for r in part}

    liver = {r["finding_id"] for r in query(out, "SELECT finding_id FROM findings WHERE list_contains(ts_labels, "
                                                 "'liver') AND finding_id IN (SELECT finding_id FROM selections)")
             .to_pylist()}
    recorded = grounded_labels(tmp_path / "dry")
    assert liver and all(recorded[fid] == ["liver"] for fid in liver)
    (tmp_path / "no_masks").mkdir()
    elsewhere = grounded_labels(tmp_path / "dry2", masks_dir=tmp_path / "no_masks")
    assert all(elsewhere[fid] == [] for fid in liver)


def test_a_failing_check_fails_each_study_before_its_series_is_read(sample_studies, tmp_path, monkeypatch):
    import keyslice.pipeline.organ_masks as organ_masks

    monkeypatch.setattr(organ_masks, "choose_series", lambda *a: pytest.fail("read a study the check refused"))

    def check():
        raise ModelWeightsMissingError("no weights here")

    outcomes = segment_studies(sample_studies, tmp_path / "masks", lambda ct, out: pytest.fail("segmented"),
                               check=check)
    assert {o.folder: o.status for o in outcomes} == {"abdomen_siemens_j2k": "skipped", "colonography_ge_3slice":
                                                      "skipped", "head_ge_tilt": "failed",
                                                      "phantom_philips_mixed": "failed"}
    assert all(o.detail == "ModelWeightsMissingError: no weights here" for o in outcomes if o.status == "failed")
