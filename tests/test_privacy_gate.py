"""The privacy gate: rules, PNG chunks, and a publish refused (with the location named) when PHI was planted."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.publish.privacy import (PrivacyGate, PngError, clean_png, dicom_phi_values, png_chunks, scan_text,
                                      scrub_text)
from tests.publish_fixtures import FixtureStudy, fixture_corpus_fixtures

TEST_KEY = "keyslice-privacy-test-key"

PHI_TEXT = {
    "Patient seen by Dr. Miller, who was informed.": "title_name",
    "Mrs Jones tolerated the procedure.": "title_name",
    "Name: John Smith": "labelled_name",
    "DOE^JOHN": "dicom_person_name",
    "Born 19560214.": "date_dicom",
    "Prior CT 2019-03-04 showed no change.": "date_iso",
    "Compared with 03/04/2019.": "date_numeric",
    "Compared with 4.3.2019.": "date_numeric",
    "Scan of March 3, 2019.": "date_text",
    "Scanned on 3rd of March 2019.": "date_text",
    "Follow-up in April 2008 showed regression.": "date_month_year",
    "MRN: A-99812": "id_label",
    "Accession no. 03086212": "id_label",
    "ID 4839201 on file": "digit_run",
    "SSN 123-45-6789": "ssn",
    "Call 555-123-4567 for results.": "phone",
    "Call +44 20 7946 0958.": "phone",
    "Tel: 0800 1234": "phone_label",
    "Contact jane.doe@hospital.org.": "email",
    "Series 1.2.840.113619.2.55.3 reviewed.": "dicom_uid",
    "Uploaded from 10.0.0.12 today.": "ip_address",
    "See https://pacs.example.org/view?id=7": "url",
    "Image at /home/radiology/ACC123/img.png": "local_path",
    "Read at St. Mary Hospital yesterday.": "institution",
    "A 93-year-old man with pain.": "age_over_89",
}

CLEAN_TEXT = [
    "A 3.5 x 2.1 cm hypodense lesion in segment 4 of the liver.",
    "The spleen measures 14 cm; no focal lesion.",
    "Axial contrast-enhanced CT at 70 s shows a 12 mm nodule in the left lower lobe.",
    "T2 vertebral body height is preserved; L4-L5 disc bulge.",
    "A 58-year-old female with abdominal pain.",
    "Dilated bowel loops up to 6.2 cm, image 45 of series 3.",
    "Drainage catheter (8 Fr) in place; HU 35-40.",
    "The patient may need a follow-up scan.",
]


@pytest.mark.parametrize("text,rule", sorted(PHI_TEXT.items()))
def test_phi_rules_fire(text, rule):
    assert rule in {h.rule for h in scan_text(text)}, scan_text(text)


@pytest.mark.parametrize("text", CLEAN_TEXT)
def test_ordinary_report_text_passes(text):
    assert scan_text(text) == []


def test_scrubber_masks_spans_and_keeps_context():
    scrubbed, hits = scrub_text("Dr. Miller reviewed MRN: 99812345 on 2019-03-04.")
    assert scrubbed == "[NAME] reviewed [ID] on [DATE]."
    assert {h.rule for h in hits} >= {"title_name", "id_label", "date_iso"}


def test_real_roco_captions_false_positive_rate(data_dir):
    """Measured on all 354 real ROCO CT captions: the only hits are real month-year dates."""
    from keyslice.sample import _SENTENCE_SPLIT

    captions = json.loads((data_dir / "roco_ct_captions" / "captions.json").read_text())
    sentences = [s for c in captions for s in _SENTENCE_SPLIT.split(c["caption"].strip())]
    flagged = {s: {h.rule for h in scan_text(s)} for s in sentences if scan_text(s)}
    assert len(sentences) > 500
    assert set().union(*flagged.values()) <= {"date_text", "date_month_year"}, flagged
    assert len(flagged) <= 10, flagged  # 7 of 540 sentences when written, each with "<Month> <year>"


def test_dicom_header_values_from_real_dicom(data_dir):
    import pydicom

    ds = pydicom.dcmread(sorted((data_dir / "dcmqi_ct3slice" / "ct-3slice").glob("*"))[0], stop_before_pixels=True)
    values = dicom_phi_values([ds])
    assert {"JANCT000", "03086212", "20030417", "2003-04-17", "99000"} <= values
    assert "1" not in values  # StudyID "1": too short to match anything meaningfully
    gate = PrivacyGate({"st-0000000000000000": values})
    gate.check_rows("findings", [{"finding_id": "st-0000000000000000:0", "study_id": "st-0000000000000000",
                                  "text": "Compared with the prior of janct000."}], ["finding_id"],
                    {"finding_id": "finding_id", "study_id": "study_id"})
    assert [(h.row, h.column, h.rule) for h in gate.report.hits] == [
        ("st-0000000000000000:0", "text", "dicom_header_value")]
    assert "janct000" not in gate.report.hits[0].detail  # the report masks the value


def test_software_columns_allow_model_release_dates_but_not_paths():
    """Dated model ids are not patient dates; the same string in a report-derived column still is a hit."""
    gate = PrivacyGate()
    row = {"qa_id": "0123456789abcdef0123", "generator": "llm:gpt-4o-2024-08-06",
           "segmenter": "llm-v1:segment_report.v1:claude-3-5-sonnet-20241022",
           "model_id": "local:/home/jdoe/models/clip", "answer": "llm:gpt-4o-2024-08-06"}
    gate.check_rows("vqa", [row], ["qa_id"], {"qa_id": "qa_id"},
                    software_columns={"generator", "segmenter", "model_id"})
    assert {(h.column, h.rule) for h in gate.report.hits} == {("model_id", "local_path"), ("answer", "date_iso")}


# --------------------------------------------------------------------------- PNG


def _png_with_text() -> tuple[bytes, np.ndarray]:
    pixels = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Patient DOE^JOHN, MRN 12345678")
    info.add_itxt("Author", "Dr. Who")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue(), pixels


def test_png_text_chunks_are_removed_without_touching_pixels():
    data, pixels = _png_with_text()
    assert {c for c, _ in png_chunks(data)} >= {b"tEXt", b"iTXt"}
    cleaned, removed = clean_png(data)
    assert set(removed) == {"tEXt", "iTXt"}
    assert [c for c, _ in png_chunks(cleaned)] == [b"IHDR", b"IDAT", b"IEND"]
    assert b"DOE^JOHN" not in cleaned
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(cleaned))), pixels)
    assert clean_png(cleaned) == (cleaned, [])  # a clean PNG is returned byte for byte


def test_broken_pngs_are_hits():
    data, _ = _png_with_text()
    with pytest.raises(PngError):
        png_chunks(b"GIF89a....")
    corrupt = bytearray(data)
    corrupt[40] ^= 0xFF
    gate = PrivacyGate()
    assert gate.check_png("images/x.png", bytes(corrupt)) is None
    trailing = data + struct.pack(">I", 0) + b"tEXt" + struct.pack(">I", zlib.crc32(b"tEXt"))
    assert gate.check_png("images/y.png", trailing) is None
    assert [h.rule for h in gate.report.hits] == ["invalid_png", "invalid_png"]


# --------------------------------------------------------------------------- planted PHI, end to end


template, corpus = fixture_corpus_fixtures(
    TEST_KEY, (FixtureStudy("case_001", "PAT-1"), FixtureStudy("case_002", "PAT-2"), FixtureStudy("case_003", None)))


def _recommit(root, stage: str, sid: str, edit) -> None:
    """Re-run a stage for one study with edited rows, through the normal checkpoint API."""
    from keyslice.pipeline.registry import STAGE_TABLES

    store = CheckpointStore(root)
    tables = {t: store.read_rows(t, sid) for t in STAGE_TABLES[stage]}
    edit(tables)
    store.commit_stage(stage, sid, tables, "planting-run")


def test_planted_phi_refuses_the_publish_and_names_every_location(corpus, tmp_path):
    from keyslice.publish import PrivacyError, publish_corpus

    root, fx = corpus
    s1, s2, s3 = (fx.study_ids[k] for k in ("case_001", "case_002", "case_003"))

    def name_in_sentence(t):  # a patient name in a report sentence
        text = t["findings"][1]["text"]
        t["findings"][1]["text"] = "Mr. Henderson has " + text[0].lower() + text[1:]

    def mrn_in_answer(t):  # a real-looking MRN that reached a VQA answer
        t["vqa"][0]["answer"] = "yes (MRN 004417823)"

    def birth_date_in_kernel(t):  # a DICOM tag value holding a birth date reached an exported column
        t["series"][0]["kernel"] = "19560214"

    _recommit(root, "segment", s1, name_in_sentence)
    _recommit(root, "vqa", s2, mrn_in_answer)
    _recommit(root, "series", s3, birth_date_in_kernel)
    planted_qa = CheckpointStore(root).read_rows("vqa", s2)[0]["qa_id"]

    out = tmp_path / "dry"
    with pytest.raises(PrivacyError) as err:
        publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    message = str(err.value)
    hits = {(h.table, h.row, h.column): h.rule for h in err.value.report.hits}
    assert hits[("findings", f"{s1}:1", "text")] == "title_name"
    assert "id_label" in hits[("vqa", planted_qa, "answer")] and "digit_run" in hits[("vqa", planted_qa, "answer")]
    kernel_rows = [k for k in hits if k[0] == "selections" and k[2] == "kernel"]
    assert kernel_rows and all(k[1].startswith(s3) for k in kernel_rows)
    assert all("date_dicom" in hits[k] for k in kernel_rows)
    assert f"findings row {s1}:1 column text: title_name" in message
    assert f"vqa row {planted_qa} column answer" in message
    assert f"selections row {kernel_rows[0][1]} column kernel: date_dicom" in message
    # nothing exported, the values themselves never printed, the report on disk says where
    assert not out.exists()
    assert "Henderson" not in message and "004417823" not in message and "19560214" not in message
    report = json.loads((root / "publish" / "o__n.privacy.json").read_text())
    assert report["ok"] is False and len(report["hits"]) == len(err.value.report.hits)
    assert "[NAME] has" in next(h["detail"] for h in report["hits"] if h["column"] == "text")


def test_scrub_text_replaces_report_phi_and_lists_each_removal(corpus, tmp_path):
    """--scrub-text: PHI-looking spans of report-derived text become placeholders, each change is in the
    report (location, rule, scrubbed value), and every other column still fails closed."""
    import datasets
    from typer.testing import CliRunner

    from keyslice.cli import app
    from keyslice.publish import PrivacyError, publish_corpus

    root, fx = corpus
    s1, s2, s3 = (fx.study_ids[k] for k in ("case_001", "case_002", "case_003"))

    def name_in_sentence(t):
        text = t["findings"][1]["text"]
        t["findings"][1]["text"] = "Mr. Henderson has " + text[0].lower() + text[1:]

    def phi_in_vqa(t):
        t["vqa"][0]["answer"] = "yes (MRN 004417823)"
        t["vqa"][1]["options"] = [*t["vqa"][1]["options"][:-1], "call 555-123-4567"]

    _recommit(root, "segment", s1, name_in_sentence)
    _recommit(root, "vqa", s2, phi_in_vqa)
    qa0, qa1 = CheckpointStore(root).read_rows("vqa", s2)[:2]
    last = f"options[{len(qa1['options']) - 1}]"

    out = tmp_path / "dry"
    result = publish_corpus(root, "o/n", dry_run_dir=out, scrub_text=True, log=lambda m: None)
    scrubbed = {(h.table, h.row, h.column): h for h in result.privacy.scrubbed}
    assert set(scrubbed) == {("findings", f"{s1}:1", "text"), ("vqa", qa0["qa_id"], "answer"),
                             ("vqa", qa1["qa_id"], last)}
    assert scrubbed[("findings", f"{s1}:1", "text")].rule == "title_name"
    assert scrubbed[("vqa", qa0["qa_id"], "answer")].detail == "yes ([ID])"
    assert scrubbed[("vqa", qa1["qa_id"], last)].detail == "call [CONTACT]"
    # what was exported is the scrubbed text, and the raw values are nowhere in the output or the report
    findings = datasets.load_dataset(str(out), "findings", cache_dir=str(tmp_path / "cache"))
    texts = {r["finding_id"]: r["text"] for part in findings.values() for r in part}
    assert texts[f"{s1}:1"].startswith("[NAME] has ")
    vqa = datasets.load_dataset(str(out), "vqa", cache_dir=str(tmp_path / "cache"))
    by_qa = {r["qa_id"]: r for part in vqa.values() for r in part}
    assert by_qa[qa0["qa_id"]]["answer"] == "yes ([ID])"
    assert by_qa[qa1["qa_id"]]["options"][-1] == "call [CONTACT]"
    report_file = root / "publish" / "o__n.privacy.json"
    for path in [report_file, *out.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert b"Henderson" not in data and b"004417823" not in data and b"555-123-4567" not in data, path
    report = json.loads(report_file.read_text())
    assert report["ok"] is True and len(report["scrubbed"]) == 3
    assert report["rules"]["title_name"].startswith("a name after a title")
    assert "3 report-derived text value(s) had PHI-looking spans replaced" in (out / "README.md").read_text()

    def birth_date_in_kernel(t):  # a DICOM-derived column: never scrubbed, the publish is still refused
        t["series"][0]["kernel"] = "19560214"

    _recommit(root, "series", s3, birth_date_in_kernel)
    with pytest.raises(PrivacyError) as err:
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry2", scrub_text=True, log=lambda m: None)
    assert {(h.table, h.column) for h in err.value.report.hits} == {("selections", "kernel")}
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", "o/n", "--scrub-text",
                                   "--dry-run", str(tmp_path / "dry3")])
    assert res.exit_code == 2 and "column kernel: date_dicom" in res.output
    assert "column text" not in res.output and "column answer" not in res.output  # those were scrubbed


def test_raw_identifier_in_an_id_column_is_refused(corpus, tmp_path):
    from keyslice.publish import PrivacyError, publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_002"]

    def raw_patient_id(t):
        t["studies"][0]["patient_id"] = "PAT-2"  # the raw DICOM PatientID instead of its pseudonym

    _recommit(root, "series", sid, raw_patient_id)
    with pytest.raises(PrivacyError) as err:
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    hits = err.value.report.hits
    assert {h.table for h in hits} == {"vqa", "findings", "selections"}
    assert {(h.column, h.rule) for h in hits} == {("patient_id", "not_a_pseudonym")}
    assert all(h.row.startswith(sid) or len(h.row) == 20 for h in hits)
    assert "PAT-2" not in str(err.value)


def test_png_metadata_is_stripped_on_export(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_001"]
    target = root / "images" / sid / "0000.png"
    original = np.asarray(Image.open(target))
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "DOE^JOHN")
    Image.fromarray(original).save(target, format="PNG", pnginfo=info)
    out = tmp_path / "dry"
    result = publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    assert result.privacy.png_chunks_removed == {f"images/{sid}/0000.png": ["tEXt"]}
    for shard in out.rglob("*.parquet"):
        assert b"DOE^JOHN" not in shard.read_bytes()
    import datasets

    ds = datasets.load_dataset(str(out), "findings", cache_dir=str(tmp_path / "cache"))
    rows = [r for part in ds.values() for r in part if r["finding_id"] == f"{sid}:0"]
    assert len(rows) == 1 and np.array_equal(np.asarray(rows[0]["image"]), original)


@pytest.mark.parametrize("column,value", [("sop_class", "1.2.840.10008.5.1.4.1.1.7.4"),
                                          ("image_type", ["DERIVED", "SECONDARY", "AXIAL"])])
def test_secondary_capture_by_series_headers_alone_is_excluded(corpus, tmp_path, column, value):
    from keyslice.publish import publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_003"]

    def as_secondary_capture(t):  # no drop reason recorded, but the SOP class or ImageType says Secondary Capture
        t["series"][0][column] = value

    _recommit(root, "series", sid, as_secondary_capture)
    result = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    assert result.privacy.excluded["rows"]["selections:secondary_capture"] >= 3
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "dry"), "vqa", cache_dir=str(tmp_path / "cache"))
    assert all(sid not in part["study_id"] for part in ds.values())


def test_dicom_header_values_checked_with_input_folder(corpus, tmp_path, data_dir):
    """--input: the real DICOM headers of each study are a deny-list for that study's rows."""
    from keyslice.publish import PrivacyError, PublishError, publish_corpus

    root, fx = corpus
    studies = tmp_path / "studies"
    for key, dicom in (("case_001", "dcmqi_ct3slice/ct-3slice"), ("case_002", "ge_head_ct_tilt"),
                       ("case_003", "ge_head_ct_tilt")):
        (studies / key).mkdir(parents=True)
        (studies / key / "report.txt").write_text("FINDINGS:\nassembled for the test.\n")
        (studies / key / "dicom").symlink_to(data_dir / dicom, target_is_directory=True)
    # the real headers hold nothing that the corpus rows repeat
    publish_corpus(root, "o/n", dry_run_dir=tmp_path / "ok", input_dir=studies, log=lambda m: None)

    sid = fx.study_ids["case_001"]

    def patient_name_in_text(t):  # the DICOM PatientName of case_001, which no text rule would catch
        t["findings"][0]["text"] = t["findings"][0]["text"].rstrip(".") + ", as in JANCT000."

    _recommit(root, "segment", sid, patient_name_in_text)
    with pytest.raises(PrivacyError) as err:
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", input_dir=studies, log=lambda m: None)
    assert [(h.table, h.row, h.column, h.rule) for h in err.value.report.hits] == [
        ("findings", f"{sid}:0", "text", "dicom_header_value")]
    # without --input the same text passes the rules: that is why --input exists
    publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry2", log=lambda m: None)
    # a studies folder that does not match the corpus (or another key) is refused, not silently skipped
    shutil.rmtree(studies / "case_003")
    with pytest.raises(PublishError, match="not in"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry3", input_dir=studies, log=lambda m: None)
    with pytest.raises(PublishError, match="is not a folder"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry3", input_dir=tmp_path / "nowhere",
                       log=lambda m: None)


def test_cli_names_the_location_and_exits_nonzero(corpus, tmp_path):
    from typer.testing import CliRunner

    from keyslice.cli import app

    root, fx = corpus
    sid = fx.study_ids["case_001"]

    def email_in_text(t):
        t["findings"][2]["text"] = "Results sent to j.doe@example.org."

    _recommit(root, "segment", sid, email_in_text)
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", "o/n", "--dry-run", str(tmp_path / "d")])
    assert res.exit_code == 2
    assert f"findings row {sid}:2 column text: email" in res.output
    assert "j.doe@example.org" not in res.output
