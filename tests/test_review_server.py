"""The review server as users run it (`keyslice review` in a subprocess, real uvicorn on 127.0.0.1):
two reviewers at once, two servers on one corpus, SIGKILL mid-session, raw path traversal."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY
from tests.review_utils import ReviewServer, copy_corpus

pytestmark = pytest.mark.slow


@pytest.fixture()
def corpus(review_corpus, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    return copy_corpus(review_corpus, tmp_path / "corpus")


class Reviewer:
    def __init__(self, server: ReviewServer, name: str) -> None:
        self.url, self.token = server.url, server.token()
        self.http = httpx.Client(timeout=30)
        self.id = self.post("/api/session", {"name": name}).json()["reviewer"]

    def post(self, path: str, body: dict) -> httpx.Response:
        return self.http.post(self.url + path, json=body, headers={"X-Keyslice-Token": self.token})

    def queue(self) -> list[dict]:
        return self.http.get(self.url + "/api/queue", params={"reviewer": self.id}).json()["items"]

    def decide(self, finding_id: str, decision: str) -> httpx.Response:
        f = self.http.get(self.url + "/api/finding", params={"id": finding_id}).json()
        return self.post("/api/decision", {"reviewer": self.id, "finding_id": finding_id, "series_id": f["series_id"],
                                           "selection_sha256": f["selection_sha256"], "decision": decision})


def test_two_reviewers_at_once_on_one_server_and_on_two(corpus, sample_studies, tmp_path):
    one = ReviewServer(corpus, sample_studies, log=tmp_path / "one.log")
    two = ReviewServer(corpus, None, log=tmp_path / "two.log")          # a second server on the same corpus
    try:
        readers = [Reviewer(one, "Reader One"), Reviewer(one, "Reader Two"), Reviewer(two, "Reader Three")]
        findings = [i["finding_id"] for i in readers[0].queue()]
        acked: list[str] = []
        lock = threading.Lock()

        def work(r: Reviewer, decision: str) -> None:
            for fid in findings:
                res = r.decide(fid, decision)
                assert res.status_code == 201, res.text
                with lock:
                    acked.append(res.json()["review_id"])

        threads = [threading.Thread(target=work, args=(r, d)) for r, d in zip(readers, ("accept", "reject", "accept"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(acked) == 3 * len(findings)
        rows = query(corpus, "select * from reviews").to_pylist()
        assert sorted(r["review_id"] for r in rows) == sorted(acked)
        assert len(list((corpus / "tables" / "reviews").glob("*.parquet"))) == len(acked)
        per = query(corpus, "select reviewer, acceptance, n_judged from review_acceptance_by_reviewer").to_pylist()
        assert sorted((r["acceptance"], r["n_judged"]) for r in per) == [(0.0, len(findings)), (1.0, len(findings)),
                                                                        (1.0, len(findings))]
        # each server sees the other's decisions: reader three's queue on server one is empty too
        assert Reviewer(one, "Reader Three").queue() == []
    finally:
        one.stop()
        two.stop()


def test_sigkill_loses_no_acknowledged_decision(corpus, sample_studies, tmp_path):
    server = ReviewServer(corpus, sample_studies, log=tmp_path / "server.log")
    reader = Reviewer(server, "Reader One")
    findings = [i["finding_id"] for i in reader.queue()]
    acked: list[str] = []
    stop = threading.Event()

    def work() -> None:
        k = 0
        while not stop.is_set():
            try:
                res = reader.decide(findings[k % len(findings)], ("accept", "reject", "skip")[k % 3])
            except httpx.HTTPError:
                return                                   # the server died under this request
            if res.status_code == 201:
                acked.append(res.json()["review_id"])
            k += 1

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()                                        # SIGKILL, in the middle of requests
    stop.set()
    t.join(30)
    assert len(acked) >= 25
    rows = {r["review_id"] for r in query(corpus, "select review_id from reviews").to_pylist()}
    assert set(acked) <= rows and len(rows) - len(acked) <= 1   # at most the one in flight, never half a file
    # a restarted server reads every decision and goes on
    again = ReviewServer(corpus, sample_studies, log=tmp_path / "again.log")
    try:
        r2 = Reviewer(again, "Reader One")
        judged = {r["finding_id"] for r in query(corpus, "select finding_id from review_judgements").to_pylist()}
        assert judged and {i["finding_id"] for i in r2.queue()} == set(findings) - judged
        assert r2.decide(findings[0], "accept").status_code == 201
    finally:
        again.stop()


def _raw_get(port: int, target: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1])


def test_path_traversal_on_the_wire(corpus, tmp_path):
    """Raw request targets (no client-side normalisation of '..')."""
    server = ReviewServer(corpus, None, log=tmp_path / "server.log")
    try:
        image = query(corpus, "select image_path from selections limit 1").to_pylist()[0]["image_path"]
        assert _raw_get(server.port, "/" + image) == 200
        for target in ("/images/../.keyslice/pseudonym.key", "/images/%2e%2e/.keyslice/pseudonym.key",
                       "/images/..%2F.keyslice%2Fpseudonym.key", "/images/../../../../etc/passwd",
                       "/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/../.keyslice/pseudonym.key",
                       "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/images/" + image + "/../../../x.png"):
            status = _raw_get(server.port, target)
            assert status in (400, 404), (target, status)
    finally:
        server.stop()
