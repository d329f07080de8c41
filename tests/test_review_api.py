"""The review app's API in process (Starlette's TestClient): decisions, validation, undo, queue
orders, slices from the studies, the token, and reviews surviving a rebuild of the selections.
Corpus: the real sample studies with the tiny random-weight model (tests/review_utils.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from keyslice.review.app import create_app, open_state
from keyslice.review.queue import order_items
from keyslice.review.store import selection_sha256
from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY
from tests.review_utils import copy_corpus


@pytest.fixture()
def corpus(review_corpus, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    return copy_corpus(review_corpus, tmp_path / "corpus")


class Client:
    """A TestClient with the page's token and a reviewer session."""

    def __init__(self, corpus: Path, studies: Path | None, name: str = "Dr Ada Lovelace", **kw) -> None:
        self.state = open_state(corpus, studies, **kw)
        self.http = TestClient(create_app(self.state), base_url="http://127.0.0.1")
        self.token = re.search(r'name="keyslice-token" content="([^"]+)"', self.http.get("/").text).group(1)
        self.reviewer = self.post("/api/session", {"name": name}).json()["reviewer"]

    def post(self, path: str, body: dict, token: str | None = "page"):
        headers = {} if token is None else {"X-Keyslice-Token": self.token if token == "page" else token}
        return self.http.post(path, json=body, headers=headers)

    def finding(self, finding_id: str) -> dict:
        return self.http.get("/api/finding", params={"id": finding_id}).json()

    def decide(self, finding_id: str, decision: str, **extra):
        f = self.finding(finding_id)
        body = {"reviewer": self.reviewer, "finding_id": finding_id, "series_id": f["series_id"],
                "selection_sha256": f["selection_sha256"], "decision": decision, **extra}
        return self.post("/api/decision", body)

    def queue(self, order: str = "uncertain") -> list[str]:
        return [i["finding_id"] for i in self.http.get("/api/queue", params={"reviewer": self.reviewer,
                                                                               "order": order}).json()["items"]]


def reviews(corpus: Path) -> list[dict]:
    return query(corpus, "select * from reviews order by decided_at").to_pylist()


def selections(corpus: Path) -> dict[str, dict]:
    return {r["finding_id"]: r for r in query(corpus, "select * from selections").to_pylist()}


def test_decisions_are_rows_with_the_selection_they_judged(corpus, sample_studies):
    c = Client(corpus, sample_studies)
    sel = selections(corpus)
    first, second, third = c.queue()[:3]
    assert c.decide(first, "accept").status_code == 201
    other = next(k for k in range(sel[second]["n_slices"]) if k != sel[second]["top1_index"])
    assert c.decide(second, "choose", chosen_index=other).status_code == 201
    assert c.decide(third, "not_visible").status_code == 201
    rows = reviews(corpus)
    assert [r["decision"] for r in rows] == ["accept", "choose", "not_visible"]
    for r in rows:
        s = sel[r["finding_id"]]
        assert (r["model_id"], r["weights_sha256"], r["series_id"]) == (s["model_id"], s["weights_sha256"],
                                                                        s["series_id"])
        assert r["selection_top1_index"] == s["top1_index"] and r["selection_sha256"] == selection_sha256(s)
        assert r["reviewer"] == c.reviewer and r["reviewer"].startswith("re-") and "Ada" not in r["reviewer"]
        assert r["app_version"].startswith("keyslice-review ")
    assert rows[0]["chosen_index"] == sel[first]["top1_index"] and rows[0]["chosen_z_mm"] == sel[first]["top1_z_mm"]
    # a chosen slice's z comes from the series itself (read from the studies with --input)
    z = c.http.get("/api/geometry", params={"id": second}).json()["z_mm"]
    assert rows[1]["chosen_index"] == other and rows[1]["chosen_z_mm"] == pytest.approx(z[other])
    assert rows[2]["chosen_index"] is None
    # one file per decision, never rewritten
    assert len(list((corpus / "tables" / "reviews").glob("*.parquet"))) == 3
    # the same name gives the same pseudonym (case and spacing aside), another name another one
    assert Client(corpus, None, name="  dr ada  LOVELACE ").reviewer == c.reviewer
    assert Client(corpus, None, name="Grace Hopper").reviewer != c.reviewer
    progress = c.http.get("/api/progress", params={"reviewer": c.reviewer}).json()
    assert progress == {"total": len(sel), "reviewed": 3, "accepted": 1, "acceptance": pytest.approx(1 / 3)}
    assert set(c.queue()) == set(sel) - {first, second, third}


def test_slices_rendered_from_the_studies_and_cached(corpus, sample_studies):
    from keyslice.selector import load_volume, render_png

    c = Client(corpus, sample_studies)
    fid, s = next((k, v) for k, v in selections(corpus).items() if v["n_slices"] == 20)
    r = c.http.get("/api/slice", params={"id": fid, "index": 5})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    study = c.state.slices.studies[s["study_id"]]
    from keyslice.dicom import index_study

    files = {x.row["series_id"]: x.files for x in index_study(study.path, c.state.pseudonymize,
                                                              image_phase=False).series}[s["series_id"]]
    assert r.content == render_png(load_volume(files), 5, s["window"])
    cached = corpus / "cache" / "review" / s["study_id"] / s["series_id"] / s["window"] / "5.png"
    assert cached.read_bytes() == r.content
    # the stored key slice is the same image as the rendered top-1 slice
    top = c.http.get("/api/slice", params={"id": fid, "index": s["top1_index"]}).content
    assert c.http.get("/" + s["image_path"]).content == top
    assert c.http.get("/api/slice", params={"id": fid, "index": 20}).status_code == 404
    assert c.http.get("/api/slice", params={"id": fid, "index": "x"}).status_code == 400
    assert c.http.get("/api/slice", params={"id": "st-nope:0", "index": 1}).status_code == 404


def test_decisions_validated_against_finding_series_and_selection(corpus, sample_studies):
    c = Client(corpus, sample_studies)
    fid = c.queue()[0]
    f = c.finding(fid)
    base = {"reviewer": c.reviewer, "finding_id": fid, "series_id": f["series_id"],
            "selection_sha256": f["selection_sha256"], "decision": "accept"}
    bad = [
        ({**base, "series_id": "se-0000000000000000"}, 400),
        ({**base, "selection_sha256": "0" * 64}, 409),
        ({**base, "finding_id": "st-0000000000000000:0"}, 404),
        ({**base, "decision": "maybe"}, 400),
        ({**base, "reviewer": "re-0000000000000000"}, 400),
        ({**base, "decision": "choose", "chosen_index": f["n_slices"]}, 400),
        ({**base, "decision": "choose", "chosen_index": -1}, 400),
        ({**base, "decision": "choose", "chosen_index": "3"}, 400),
        ({**base, "decision": "choose"}, 400),
        ({**base, "decision": "undo", "undoes": "nope"}, 400),
    ]
    for body, status in bad:
        assert c.post("/api/decision", body).status_code == status, body
    assert c.http.post("/api/decision", content=b"not json", headers={"X-Keyslice-Token": c.token}).status_code == 400
    assert reviews(corpus) == []


def test_undo_is_a_new_row_and_puts_the_finding_back(corpus, sample_studies):
    c = Client(corpus, sample_studies)
    other = Client(corpus, sample_studies, name="Grace Hopper")
    fid = c.queue()[0]
    accepted = c.decide(fid, "reject").json()["review_id"]
    assert fid not in c.queue()
    assert other.decide(fid, "undo", undoes=accepted).status_code == 400  # not one's own decision
    undo = c.decide(fid, "undo", undoes=accepted)
    assert undo.status_code == 201 and undo.json()["progress"]["reviewed"] == 0
    assert fid in c.queue()
    assert c.decide(fid, "undo", undoes=accepted).status_code == 409     # already undone
    assert c.decide(fid, "undo", undoes=undo.json()["review_id"]).status_code == 400  # an undo is not undone
    rows = reviews(corpus)
    assert [(r["decision"], r["undoes"]) for r in rows] == [("reject", None), ("undo", accepted)]
    # undo stack: accept, then reject, undo the reject -> the accept stands again
    first = c.decide(fid, "accept").json()["review_id"]
    second = c.decide(fid, "reject").json()["review_id"]
    c.decide(fid, "undo", undoes=second)
    [standing] = query(corpus, "select * from review_judgements").to_pylist()
    assert standing["review_id"] == first and standing["accepted"]


def test_queue_orders(corpus):
    c = Client(corpus, None)
    sel = selections(corpus)
    uncertain = c.queue("uncertain")
    margins = [sel[f]["margin"] for f in uncertain]
    known = [m for m in margins if m is not None]
    assert known == sorted(known) and margins[: len(known)] == known      # smallest margin first, unknown last
    assert c.queue("study") == [r["finding_id"] for r in sorted(
        sel.values(), key=lambda r: (r["study_id"], int(r["finding_id"].rsplit(":", 1)[1])))]
    organs = [sel[f]["finding_id"] for f in c.queue("organ")]
    assert len(organs) == len(sel)
    rnd = c.queue("random")
    assert rnd == c.queue("random") and sorted(rnd) == sorted(sel) and rnd != c.queue("study")
    assert c.http.get("/api/queue", params={"reviewer": c.reviewer, "order": "bogus"}).status_code == 400
    items = [{"finding_id": str(i), "study_id": "s", "finding_index": i, "margin": m, "peakedness": None}
             for i, m in enumerate([0.3, None, 0.1])]
    assert [r["finding_id"] for r in order_items(items, "uncertain")] == ["2", "0", "1"]


def test_without_studies_only_top_k_can_be_chosen(corpus):
    c = Client(corpus, None)
    fid, s = next((k, v) for k, v in selections(corpus).items() if v["n_slices"] == 28)
    f = c.finding(fid)
    assert f["slices"] is False and f["curve"] == pytest.approx(s["curve"])
    assert c.http.get("/api/slice", params={"id": fid, "index": 0}).status_code == 404
    outside = next(k for k in range(28) if k not in s["topk_indices"])
    assert c.decide(fid, "choose", chosen_index=outside).status_code == 400
    assert c.decide(fid, "choose", chosen_index=s["topk_indices"][1]).status_code == 201


def test_token_host_and_path_traversal(corpus, sample_studies):
    c = Client(corpus, sample_studies)
    fid = c.queue()[0]
    f = c.finding(fid)
    body = {"reviewer": c.reviewer, "finding_id": fid, "series_id": f["series_id"],
            "selection_sha256": f["selection_sha256"], "decision": "accept"}
    assert c.post("/api/decision", body, token=None).status_code == 403
    assert c.post("/api/decision", body, token="wrong").status_code == 403
    assert c.post("/api/session", {"name": "x"}, token=None).status_code == 403
    assert c.http.get("/", headers={"Host": "evil.example"}).status_code == 400      # DNS rebinding
    assert reviews(corpus) == []
    # images only from CORPUS/images, only PNGs, no way out
    (corpus / "images" / "notes.txt").write_text("x")
    (corpus / "images" / "escape.png").symlink_to(corpus / ".keyslice" / "pseudonym.key")
    for path in ("/images/notes.txt", "/images/escape.png", "/images/nope.png", "/images//etc/passwd",
                 "/images/%2e%2e/.keyslice/pseudonym.key", "/images/..%2f.keyslice%2fpseudonym.key",
                 "/images/%2e%2e/tables/reviews"):
        assert c.http.get(path).status_code == 404, path
    assert c.http.get("/" + next(iter(selections(corpus).values()))["image_path"]).status_code == 200


def test_remote_host_needs_the_token_on_every_request(corpus):
    state = open_state(corpus, None, token="s3cret-token", token_required=True)
    http = TestClient(create_app(state, allowed_hosts=["127.0.0.1", "review.example"]),
                      base_url="http://review.example")
    assert http.get("/").status_code == 403
    assert http.get("/api/queue").status_code == 403
    assert http.get("/static/app.js").status_code == 403
    page = http.get("/", params={"token": "s3cret-token"})
    assert page.status_code == 200 and "s3cret-token" in page.text
    assert http.get("/api/queue").status_code == 200            # the HttpOnly cookie set by the page
    http.cookies.clear()
    assert http.get("/api/queue", headers={"X-Keyslice-Token": "s3cret-token"}).status_code == 200
    assert http.get("/api/queue", params={"token": "nope"}).status_code == 403


@pytest.mark.slow
def test_rebuilt_selections_keep_every_review_and_say_which_they_judged(corpus, sample_studies, tmp_path):
    """--force-stage keyslice with other weights: reviews stay, and each still names the selection it judged."""
    from keyslice.selector import save_tiny_checkpoint
    from tests.review_utils import build_sample_corpus

    c = Client(corpus, sample_studies)
    before = selections(corpus)
    for fid in list(before)[:6]:
        assert c.decide(fid, "accept").status_code == 201
    open_page = c.finding(list(before)[7])          # a page left open across the rebuild
    other_model = tmp_path / "other_model"
    save_tiny_checkpoint(other_model, seed=1)
    from keyslice.corpus.checkpoints import CheckpointStore

    store = CheckpointStore(corpus)
    for sid in store.done_studies("keyslice"):
        store.invalidate("keyslice", sid)
    build_sample_corpus(sample_studies, corpus, other_model)
    after = selections(corpus)
    assert {r["weights_sha256"] for r in after.values()} != {r["weights_sha256"] for r in before.values()}
    rows = reviews(corpus)
    assert len(rows) == 6
    for r in rows:
        assert r["weights_sha256"] == before[r["finding_id"]]["weights_sha256"]
        assert r["selection_sha256"] == selection_sha256(before[r["finding_id"]])
    judged = query(corpus, "select finding_id, judged_current from review_judgements").to_pylist()
    assert len(judged) == 6 and not any(r["judged_current"] for r in judged)
    # the app that stayed open notices the rebuild instead of recording a judgement of other slices
    stale = c.post("/api/decision", {"reviewer": c.reviewer, "finding_id": open_page["finding_id"],
                                     "series_id": open_page["series_id"], "decision": "accept",
                                     "selection_sha256": open_page["selection_sha256"]})
    assert stale.status_code == 409 and len(reviews(corpus)) == 6
    assert c.finding(open_page["finding_id"])["weights_sha256"] == after[open_page["finding_id"]]["weights_sha256"]
    # the app shows the rebuilt selections as not yet reviewed
    c2 = Client(corpus, sample_studies)
    assert len(c2.queue()) == len(after)
    by_model = query(corpus, "select * from review_acceptance_by_model").to_pylist()
    assert [(r["weights_sha256"], r["n_judged"], r["acceptance"]) for r in by_model] == [
        (next(iter(before.values()))["weights_sha256"], 6, 1.0)]


def test_reviews_files_are_schema_checked(corpus, sample_studies):
    c = Client(corpus, sample_studies)
    c.decide(c.queue()[0], "skip")
    [path] = (corpus / "tables" / "reviews").glob("*.parquet")
    table = pq.read_table(path)
    assert table.schema.metadata[b"keyslice.table"] == b"reviews"
    assert table.column("decision").to_pylist() == ["skip"]
