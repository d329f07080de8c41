import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keyslice.errors import InputError
from keyslice.pseudonym import Pseudonymizer
from keyslice.pipeline.studies import discover_studies

PSEUDO = Pseudonymizer(b"k", "env")


def test_report_folders_are_studies_and_their_subfolders_belong_to_them(tmp_path):
    (tmp_path / "a" / "series1").mkdir(parents=True)
    (tmp_path / "a" / "report.txt").write_text("FINDINGS: liver normal.")
    (tmp_path / "a" / "series1" / "report.txt").write_text("nested: not a second study")
    (tmp_path / "b" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "b" / "deep" / "er" / "report.txt").write_text("x")
    (tmp_path / "no_report").mkdir()
    studies = discover_studies(tmp_path, PSEUDO)
    assert sorted(s.source_key for s in studies) == ["a", "b/deep/er"]
    assert all(s.study_id.startswith("st-") and "a" != s.study_id for s in studies)


def test_manifest_supplies_reports(tmp_path):
    (tmp_path / "s1").mkdir()
    pq.write_table(pa.table({"study": ["s1"], "report": ["The spleen is enlarged."]}), tmp_path / "manifest.parquet")
    [study] = discover_studies(tmp_path, PSEUDO)
    assert study.read_report() == "The spleen is enlarged."


def test_manifest_without_report_column_is_refused(tmp_path):
    (tmp_path / "manifest.csv").write_text("study,text\ns1,x\n")
    with pytest.raises(ValueError, match="report"):
        discover_studies(tmp_path, PSEUDO)


def test_pseudonyms_depend_on_the_key():
    other = Pseudonymizer(b"other", "env")
    assert PSEUDO("study", "a") == PSEUDO("study", "a")
    assert PSEUDO("study", "a") != other("study", "a")
    assert PSEUDO("study", "a") != PSEUDO("patient", "a")


def test_missing_report_is_an_input_error(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "manifest.csv").write_text("study,report\ns1,\n")
    [study] = discover_studies(tmp_path, PSEUDO)
    assert study.read_report() == ""
    from keyslice.pipeline.studies import Study
    with pytest.raises(InputError, match="report.txt"):
        Study("st-x", "s2", tmp_path / "s2", None).read_report()
