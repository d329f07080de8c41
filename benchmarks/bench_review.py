"""Review app speed on a SYNTHETIC corpus of 2,000 findings: startup, page load, time per decision.

    python benchmarks/bench_review.py                       # 2,000 findings, 2,000 decisions
    python benchmarks/bench_review.py --browser --out benchmarks/results/review.txt

The corpus is SYNTHETIC: 200 studies x 10 findings written straight into the tables (findings,
series, selections v2 with 64-slice curves) plus one 512x512 PNG key slice per finding; no DICOM,
no model. The app runs in a real uvicorn on 127.0.0.1 (a thread of this process) and is timed over
HTTP with httpx:

* startup: ``open_state`` (queue read with DuckDB, reviews read) as ``keyslice review`` does;
* page load (median of 5): GET / + app.js + app.css, POST /api/session, GET /api/queue (all 2,000
  entries), GET /api/finding (the first), GET its key-slice PNG: what the page fetches before the
  first finding is on screen;
* with ``--browser``: the same in headless Chromium, from navigation to the first key slice drawn;
* time per decision: POST /api/decision (one fsynced Parquet file each) for every finding, with
  the GET /api/finding the page makes for the next one; median and 95th percentile of the first and
  the last 200 (the table grows to 2,000 files meanwhile).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keyslice.corpus.checkpoints import CheckpointStore  # noqa: E402
from keyslice.pseudonym import load_pseudonymizer  # noqa: E402
from keyslice.corpus.schemas import to_table  # noqa: E402
from keyslice.corpus.atomic import write_parquet_atomic  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
ORGANS = ["liver", "kidney", "spleen", "pancreas", "lung", "aorta", "gallbladder", "stomach"]


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:512, :512]
    img = (127 + 100 * np.sin((x + seed) / 40.0) * np.cos(y / 55.0) + rng.normal(0, 8, (512, 512))).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_corpus(root: Path, n_studies: int = 200, per_study: int = 10, n_slices: int = 64) -> int:
    """Write a SYNTHETIC corpus; returns the number of findings."""
    store = CheckpointStore(root)
    load_pseudonymizer(root)
    rng = np.random.default_rng(0)
    pngs = [_png(i) for i in range(16)]
    for s in range(n_studies):
        sid = f"st-synthetic{s:05d}"
        series = {"study_id": sid, "series_id": "se-synthetic0001", "grouping": "uid", "series_number": 3,
                  "modality": "CT", "kept": True, "n_instances": n_slices, "n_slices": n_slices,
                  "z_min_mm": 0.0, "z_max_mm": 2.5 * (n_slices - 1), "slice_spacing_mm": 2.5,
                  "spacing_uniform": True, "phase": "portal_venous", "orientation": "axial",
                  "phase_confidence": 0.9, "phase_evidence": ["SYNTHETIC"], "warnings": [], "created_at": T0}
        findings, selections = [], []
        for k in range(per_study):
            fid = f"{sid}:{k}"
            organ = ORGANS[(s + k) % len(ORGANS)]
            findings.append({"study_id": sid, "finding_id": fid, "finding_index": k, "section": "findings",
                             "text": f"SYNTHETIC finding {k}: a 12 mm hypodense lesion in the {organ}.",
                             "organ": organ, "organs": [organ], "ts_labels": [organ], "status": "abnormal",
                             "measurements_mm": [12.0], "image_refs": [], "language": "en", "segmenter": "rules",
                             "created_at": T0})
            curve = rng.normal(0.2, 0.01, n_slices).astype(float)
            order = np.argsort(-curve)
            top = int(order[0])
            z = 2.5 * np.arange(n_slices)
            far = np.abs(z - z[top]) > 10
            margin = float(curve[top] - curve[far].max())
            path = f"images/{sid}/{k:04d}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(pngs[(s + k) % len(pngs)])
            selections.append({"study_id": sid, "finding_id": fid, "series_id": "se-synthetic0001",
                               "model_id": "synthetic", "weights_sha256": "0" * 64, "window": "abdomen",
                               "n_slices": n_slices, "top1_index": top, "top1_instance_number": top + 1,
                               "top1_z_mm": float(z[top]), "top1_score": float(curve[top]),
                               "topk_indices": [int(i) for i in order[:5]],
                               "topk_scores": [float(curve[i]) for i in order[:5]], "restricted_to": None,
                               "z_range_mm": None, "margin": margin, "peakedness": 2.0,
                               "uncertain": margin < 0.01, "curve": curve.tolist(), "image_path": path,
                               "created_at": T0})
        write_parquet_atomic(store.table_path("findings", sid), to_table("findings", findings))
        write_parquet_atomic(store.table_path("series", sid), to_table("series", [series]))
        write_parquet_atomic(store.table_path("selections", sid), to_table("selections", selections))
    return n_studies * per_study


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--per-study", type=int, default=10)
    ap.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()

    import httpx

    from keyslice.review.app import create_app, open_state
    from tests.review_utils import free_port

    lines = [f"bench_review: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f} at "
             f"start; SYNTHETIC corpus"]
    work = Path(tempfile.mkdtemp(prefix="keyslice-bench-review-"))
    try:
        os.environ.pop("KEYSLICE_PSEUDONYM_KEY", None)
        t = time.perf_counter()
        n = synthetic_corpus(work / "corpus", args.studies, args.per_study)
        lines.append(f"corpus: {n} findings in {args.studies} studies, written in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        state = open_state(work / "corpus")
        startup = time.perf_counter() - t
        lines.append(f"startup (open_state: queue + reviews): {startup * 1000:.0f} ms")
        port = free_port()
        server, thread = _serve(create_app(state), port)
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(timeout=60)
        loads, queue_ms = [], []
        for i in range(5):
            t = time.perf_counter()
            html = http.get(url + "/").text
            token = re.search(r'name="keyslice-token" content="([^"]+)"', html).group(1)
            http.get(url + "/static/app.js"), http.get(url + "/static/app.css")
            rev = http.post(url + "/api/session", json={"name": f"Bench Reader {i}"},
                            headers={"X-Keyslice-Token": token}).json()["reviewer"]
            tq = time.perf_counter()
            items = http.get(url + "/api/queue", params={"reviewer": rev}).json()["items"]
            queue_ms.append((time.perf_counter() - tq) * 1000)
            f = http.get(url + "/api/finding", params={"id": items[0]["finding_id"]}).json()
            http.get(url + f["key_image"]).raise_for_status()
            loads.append((time.perf_counter() - t) * 1000)
        lines.append(f"page load over HTTP (page, script, style, session, queue of {len(items)}, first finding, "
                     f"its PNG): median {statistics.median(loads):.0f} ms (min {min(loads):.0f}, max "
                     f"{max(loads):.0f}); of which GET /api/queue median {statistics.median(queue_ms):.0f} ms")
        if args.browser:
            lines.append(_browser_load(url))
        times = []
        for item in items:
            t = time.perf_counter()
            res = http.post(url + "/api/decision", headers={"X-Keyslice-Token": token}, json={
                "reviewer": rev, "finding_id": item["finding_id"], "series_id": f["series_id"],
                "selection_sha256": state.corpus.items[item["finding_id"]]["selection_sha256"],
                "decision": "accept" if len(times) % 2 else "reject"})
            assert res.status_code == 201, res.text
            f = http.get(url + "/api/finding", params={"id": item["finding_id"]}).json()
            times.append((time.perf_counter() - t) * 1000)
        first, last = times[:200], times[-200:]
        lines.append(f"time per decision (POST /api/decision + GET the next finding), {len(times)} decisions: "
                     f"first 200 median {statistics.median(first):.1f} ms, p95 {_pct(first, 95):.1f} ms; last 200 "
                     f"(table of {len(times)} files) median {statistics.median(last):.1f} ms, p95 {_pct(last, 95):.1f} ms")
        n_files = len(list((work / "corpus" / "tables" / "reviews").glob("*.parquet")))
        lines.append(f"reviews files written: {n_files} (one per decision)")
        server.should_exit = True
        thread.join(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


def _browser_load(url: str) -> str:
    """Headless Chromium: navigation -> name entered -> first key slice drawn, median of 3."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return "browser: selenium not installed, not measured"
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        return "browser: chromium/chromedriver not found, not measured"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,900"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver_bin), options=opts)
    nav, first = [], []
    try:
        for i in range(3):
            t = time.perf_counter()
            d.get(url + "/")
            nav.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            d.find_element(By.ID, "name").send_keys(f"Browser Reader {i}", Keys.ENTER)
            WebDriverWait(d, 60).until(lambda d: d.execute_script(
                "const i = document.getElementById('slice'); return !!i.getAttribute('src') && i.complete "
                "&& i.naturalWidth > 0"))
            first.append((time.perf_counter() - t) * 1000)
    finally:
        d.quit()
    return (f"browser (headless Chromium): page loaded (navigation) median {statistics.median(nav):.0f} ms; "
            f"name entered -> first key slice drawn median {statistics.median(first):.0f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
