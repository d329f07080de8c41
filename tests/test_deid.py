"""De-identification (keyslice.deid): hard cases, recall floors on the SYNTHETIC-PHI case set, what it does to
real report sentences, failure-message sanitising, and the publish gate using the same detector.

Recall is measured by benchmarks/bench_phi.py on tests/fixtures/phi_cases.json (SYNTHETIC PHI inserted into
REAL ROCO CT caption sentences; a span counts only if wholly masked). Recorded in benchmarks/results/phi.txt:

    first run, before any rule was changed on the set:   test 198/222 = 0.892, all 391/444 = 0.881
    after fixing the rules on what that run missed:       test 221/222 = 0.995, all 441/444 = 0.993
    blind set (tests/fixtures/phi_cases_blind.json, written after the fixes, measured once): see phi.txt

The second line is tuned on the set, so the floors below sit well under it (two binomial standard errors of
the whole set and then some): a broken rule family (all names, all dates) fails them; a single new miss does
not. Real captions: 7 of 540 sentences change, each by a real date in the caption (checked by reading them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keyslice.deid import deidentify, sanitize_message, scan_text
from keyslice.deid_eval import caption_sentences, changed_sentences, load_cases, score_cases

FIXTURES = Path(__file__).parent / "fixtures"

#: text -> (values that must be gone, placeholder that must be there)
HARD_CASES = {
    "Dr. Jonathan Whitfield reviewed the scan.": (["Jonathan", "Whitfield"], "[NAME] reviewed"),
    "Discussed with Dr Mary-Jane O'Neil-Smith.": (["Mary", "Jane", "O'Neil", "Smith"], "[NAME]"),
    "Read by Prof. Anna de la Cruz today.": (["Anna", "Cruz"], "[NAME]"),
    "Seen by Jane Doe yesterday.": (["Jane", "Doe"], "[NAME]"),
    "Jane Doe presented with abdominal pain.": (["Jane", "Doe"], "[NAME] presented"),
    "Report for DOE^JANE.": (["DOE", "JANE"], "[NAME]"),
    "Patient: Doe, Jane A.": (["Doe", "Jane"], "[NAME]"),
    "Signed by: Jonathan Whitfield, MD": (["Jonathan", "Whitfield"], "[NAME]"),
    "Seen by Oluwaseun Adebayo in clinic.": (["Oluwaseun", "Adebayo"], "[NAME]"),
    "Lives at 123 Main Street, Apt 4B, Boston, MA 02115.": (["123 Main", "Boston", "02115"], "[ADDRESS]"),
    "A ninety-two-year-old woman with pain.": (["ninety"], "[AGE]"),
    "A 92-year-old man, aged 101 by now.": (["92", "101"], "[AGE]"),
    "MRN: 00482913": (["00482913"], "[ID]"),
    "Folder MRN00482913 was copied.": (["00482913"], "[ID]"),
    "Accession #: ACC2021-00042": (["2021-00042"], "[ID]"),
    "Send to jane.doe@hospital.org.": (["jane.doe", "hospital.org"], "[CONTACT]"),
    "Call (617) 555-0199 with results.": (["555-0199"], "[CONTACT]"),
    "Daughter: +44 20 7946 0958.": (["7946"], "[CONTACT]"),
    "Mary Smith was seen.": (["Mary", "Smith"], "[NAME] was seen"),
    "Kate Turner has Turner syndrome.": (["Kate"], "[NAME] has Turner syndrome"),
}

#: eight date formats (and one with a time): every one masked whole
DATES = ["March 3rd, 2021", "03/04/21", "2021-03-04", "3 Mar 2021", "03-MAR-2021", "20210304", "4.3.2021",
         "March 2021", "the 3rd of March", "2019-11-12T08:15:00", "12/11/2019 14:32", "Tuesday, May 4, 2021"]

#: real report language that must survive (eponyms, anatomy, measurements, ages under 90, series refs)
MEDICAL = [
    "Axial CT shows a Wilms tumor in the left kidney.",
    "Klatskin tumor at the hilum; Bosniak IIF cyst of the right kidney.",
    "Sister Mary Joseph nodule at the umbilicus.",
    "Mallory-Weiss tear; Budd-Chiari syndrome; Barrett esophagus.",
    "A 58-year-old female with abdominal pain.",
    "A 3.5 x 2.1 cm hypodense lesion in segment 4 of the liver, image 45 of series 3.",
    "Crohn disease with terminal ileum thickening; Hounsfield units 35-40.",
    "L4-L5 disc bulge; T2 vertebral body height preserved.",
]


@pytest.mark.parametrize("text", sorted(HARD_CASES))
def test_hard_cases_are_masked_whole(text):
    gone, token = HARD_CASES[text]
    out = deidentify(text).text
    assert token in out, out
    for value in gone:
        assert value not in out, (value, out)


@pytest.mark.parametrize("date", DATES)
def test_dates_in_every_common_format(date):
    out = deidentify(f"Compared with the study of {date}, no change.").text
    assert out == "Compared with the study of [DATE], no change.", out


@pytest.mark.parametrize("text", MEDICAL)
def test_medical_text_survives(text):
    assert deidentify(text).text == text, scan_text(text)


def test_counts_never_values():
    result = deidentify("Dr. Jonathan Whitfield saw DOE^JANE (MRN 00482913) on 2021-03-04; call 617-555-0142.")
    assert dict(result.counts) == {"contact": 1, "date": 1, "id": 1, "name": 2}
    assert result.text == "[NAME] saw [NAME] ([ID]) on [DATE]; call [CONTACT]."


def test_recall_floors_on_synthetic_phi_in_real_sentences():
    fixture = load_cases(FIXTURES / "phi_cases.json")
    assert sum(len(c["spans"]) for c in fixture["cases"]) >= 400
    assert all(c["roco_id"] and c["pmc_image"] and c["source"] for c in fixture["cases"])
    table = score_cases(fixture["cases"])
    got, total = table.recall("all")
    assert got / total >= 0.96, table.misses
    got, total = table.recall("test")
    assert got / total >= 0.95, table.misses
    for kind in fixture["types"]:
        got, total = table.recall("all", kind)
        assert got / total >= (0.85 if kind == "location" else 0.93), (kind, got, total, table.misses)


def test_blind_set_recall_floor():
    """The blind set was written after the rules were fixed and measured once; its floor is that
    measurement minus two binomial standard errors."""
    fixture = load_cases(FIXTURES / "phi_cases_blind.json")
    table = score_cases(fixture["cases"])
    got, total = table.recall("all")
    assert total >= 80
    assert got / total >= fixture["floor"], table.misses


def test_real_caption_sentences_change_only_where_they_hold_a_date(data_dir):
    sentences = caption_sentences(data_dir)
    changed = changed_sentences(sentences)
    assert len(sentences) > 500
    assert len(changed) <= 10, changed  # 7 of 540 when measured, each a real "<Month> <year>" or full date
    assert {r for _, _, rules in changed for r in rules} <= {"date_text", "date_month_year"}, changed


def test_failure_messages_lose_paths_and_names(tmp_path):
    folder = tmp_path / "in" / "Smith John MRN00482913"
    private = (str(folder), "Smith John MRN00482913", folder.name)
    for raw in (f"[Errno 2] No such file or directory: '{folder}/report.txt'",
                f"study folder {folder} does not exist or is not a folder",
                "cannot read Smith John MRN00482913/report.txt"):
        out = sanitize_message(raw, private)
        for value in ("Smith", "John", "00482913", str(tmp_path)):
            assert value not in out, out
        assert "<study>" in out
    # without the private strings the detector still removes the name, the number and the absolute path
    out = sanitize_message(f"study folder {folder} does not exist; series se-0123456789abcdef")
    for value in ("John", "00482913", str(tmp_path)):
        assert value not in out, out
    assert "se-0123456789abcdef" in out  # pseudonyms are kept: they say which series failed


def test_record_failure_stores_the_sanitised_message(tmp_path):
    import pyarrow.parquet as pq

    from keyslice.corpus.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "corpus")
    folder = tmp_path / "in" / "Smith John MRN00482913"
    stored = store.record_failure("st-0000000000000000", "segment",
                                  FileNotFoundError(2, "No such file or directory", str(folder / "report.txt")),
                                  1, "run", private=(str(folder), folder.name))
    (row,) = pq.read_table(store.table_files("failures")[0]).to_pylist()
    assert row["message"] == stored == "[Errno 2] No such file or directory: '<study>/report.txt'"


def test_gate_uses_the_same_detector_and_prints_no_value():
    from keyslice.publish.privacy import PrivacyError, PrivacyGate

    gate = PrivacyGate()
    text = "Dr. Jonathan Whitfield reviewed; Jane Doe, 123 Main Street, a ninety-two-year-old."
    gate.check_rows("findings", [{"finding_id": "st-0000000000000000:0", "text": text}], ["finding_id"],
                    {"finding_id": "finding_id"})
    (hit,) = gate.report.hits
    assert {"title_name", "bare_name", "street_address", "age_over_89"} <= set(hit.rule.split(", "))
    assert hit.detail == "[NAME] reviewed; [NAME], [ADDRESS], a [AGE]."
    with pytest.raises(PrivacyError) as err:
        gate.raise_if_hits()
    message = str(err.value)
    for value in ("Jonathan", "Whitfield", "Jane", "Doe", "Main", "ninety"):
        assert value not in message, message
    assert "[NAME] at 0-22" in message


def test_scrub_text_masks_the_whole_name():
    from keyslice.publish.privacy import scrub_rows

    rows = [{"finding_id": "st-0000000000000000:0", "text": "Dr. Jonathan Whitfield has a 2 cm liver cyst."}]
    changed = scrub_rows("findings", rows, "finding_id", ["text"])
    assert rows[0]["text"] == "[NAME] has a 2 cm liver cyst."
    assert "Whitfield" not in changed[0].detail and "Whitfield" not in str(changed[0])


def test_report_is_deidentified_as_it_is_read(tmp_path):
    from keyslice.pipeline.studies import Study

    folder = tmp_path / "Doe Jane"
    folder.mkdir()
    (folder / "report.txt").write_text("FINDINGS:\nDr. Jonathan Whitfield: 2 cm cyst in the liver on 03/04/2021.\n")
    study = Study("st-0000000000000000", "Doe Jane", folder, None)
    assert study.read_report() == "FINDINGS:\n[NAME]: 2 cm cyst in the liver on [DATE].\n"
    assert dict(study.read_report_deid().counts) == {"date": 1, "name": 1}
    manifest = Study("st-0000000000000000", "x", folder, "Seen by Jane Doe (MRN 00482913).")
    assert manifest.read_report() == "Seen by [NAME] ([ID])."


def test_deidentified_text_scans_clean():
    """What ingestion writes must pass the gate: de-identifying twice changes nothing."""
    fixture = load_cases(FIXTURES / "phi_cases.json")
    for case in fixture["cases"]:
        once = deidentify(case["text"]).text
        assert scan_text(once) == [], (once, scan_text(once))
