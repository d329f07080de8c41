"""The review page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
with the keyboard through Selenium; the decisions it makes are asserted as rows of `reviews`, and a
screenshot of the page is written to .artifacts/review_page.png (KEYSLICE_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY
from tests.review_utils import REPO, ReviewServer, copy_corpus

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture()
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium / chromedriver not found: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,900", "--no-proxy-server", "--disable-background-networking"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _artifacts() -> Path:
    folder = Path(os.environ.get("KEYSLICE_TEST_ARTIFACTS", REPO / ".artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_keyboard_review_in_chromium(browser, review_corpus, sample_studies, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    corpus = copy_corpus(review_corpus, tmp_path / "corpus")
    sel = {r["finding_id"]: r for r in query(corpus, "select * from selections").to_pylist()}
    server = ReviewServer(corpus, sample_studies, log=tmp_path / "server.log")
    try:
        d = browser
        wait = WebDriverWait(d, 30)
        d.get(server.url + "/")
        d.find_element(By.ID, "name").send_keys("Dr Browser Test", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "sentence").text.strip())
        body = d.find_element(By.TAG_NAME, "body")

        def current() -> str:
            return d.find_element(By.ID, "queue-pos").text.rsplit(" \u00b7 ", 1)[1]

        def press(*keys: str) -> str:
            before = current()
            body.send_keys(*keys)
            wait.until(lambda d: current() != before)
            return before

        def shown_slice() -> int:
            return int(d.find_element(By.ID, "overlay-slice").text.split()[1]) - 1

        # 1: scroll two slices away from the key slice (arrow keys), wait for that slice, choose it
        first = current()
        top1, n = sel[first]["top1_index"], sel[first]["n_slices"]
        step = Keys.ARROW_DOWN if top1 + 2 < n else Keys.ARROW_UP
        body.send_keys(step, step)
        target = top1 + 2 if top1 + 2 < n else top1 - 2
        wait.until(lambda d: shown_slice() == target)
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('slice'); return i.complete && i.naturalWidth > 0"))
        d.save_screenshot(str(_artifacts() / "review_page.png"))
        press("c")
        # 2: accept, 3: reject, 4: not visible, 5: skip, then undo twice (the skip, the 'not visible')
        second = press("a")
        third = press("r")
        fourth = press("n")
        fifth = press("s")
        body.send_keys("u")
        wait.until(lambda d: current() == fifth and "undone" in d.find_element(By.ID, "message").text)
        body.send_keys("u")
        wait.until(lambda d: current() == fourth)
        wait.until(lambda d: len(query(corpus, "select * from reviews").to_pylist()) == 7)
        progress = d.find_element(By.ID, "progress-text").text
    finally:
        server.stop()
    rows = query(corpus, "select * from reviews order by decided_at").to_pylist()
    got = [(r["finding_id"], r["decision"], r["chosen_index"]) for r in rows]
    assert got[:5] == [(first, "choose", target), (second, "accept", sel[second]["top1_index"]),
                       (third, "reject", None), (fourth, "not_visible", None), (fifth, "skip", None)]
    assert [(r["decision"], r["undoes"]) for r in rows[5:]] == [("undo", rows[4]["review_id"]),
                                                                ("undo", rows[3]["review_id"])]
    assert progress.startswith(f"3 / {len(sel)} reviewed") and "accepted 1" in progress
    judged = {r["finding_id"] for r in query(corpus, "select * from review_judgements").to_pylist()}
    assert judged == {first, second, third}
