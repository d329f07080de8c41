"""Test helpers for publishing: a corpus writer built from real data, and a fake Hugging Face Hub.

The corpus writer commits rows through :meth:`CheckpointStore.commit_stage` exactly like a build:
key slices are PNGs rendered from REAL DICOM slices (``ge_head_ct_tilt``: pydicom + numpy brain
window), finding sentences are REAL ROCO CT caption sentences. What is assembled (not real) is the
pairing of sentences with slices, the per-row tags and the VQA pairs; the test names say so.

The fake Hub is a small HTTP server on 127.0.0.1 implementing just what ``huggingface_hub``'s
upload path uses (repo create/info, tree listing, YAML validation, preupload, the LFS batch API
and PUT, the NDJSON commit), recording every request.
"""

from __future__ import annotations

import contextlib

import base64
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.pseudonym import KEY_ENV, Pseudonymizer
from keyslice.corpus.sql import query

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
DICOM_DIR = Path("ge_head_ct_tilt")
CAPTIONS = Path("roco_ct_captions") / "captions.json"


# --------------------------------------------------------------------------- real pieces


def render_dicom_png(path: Path, window: tuple[float, float] = (80.0, 40.0)) -> bytes:
    """A real CT slice as an 8-bit PNG: HU from the stored values and rescale, brain window W/L."""
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0))
    width, level = window
    low = level - width / 2
    img = np.clip((hu - low) / width, 0, 1) * 255
    buf = io.BytesIO()
    Image.fromarray(img.round().astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def clean_caption_sentences(data_dir: Path, n: int) -> list[tuple[str, str]]:
    """(roco_id, sentence): the first sentence of real ROCO captions that the PHI rules pass."""
    from keyslice.publish.privacy import scan_text
    from keyslice.sample import _SENTENCE_SPLIT

    out = []
    for item in json.loads((data_dir / CAPTIONS).read_text()):
        sentence = _SENTENCE_SPLIT.split(item["caption"].strip())[0]
        if 20 <= len(sentence) <= 200 and not scan_text(sentence):
            out.append((item["roco_id"], sentence))
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- corpus writer


@dataclass(frozen=True)
class FixtureStudy:
    key: str                       # source folder name (private; only its pseudonym is stored)
    patient: str | None            # raw PatientID (private), None = absent from the DICOM
    n_findings: int = 3
    burned_in_series: bool = False  # one extra series with BurnedInAnnotation YES holding the last finding
    sc_selection: bool = False      # a (bogus) selection on the secondary-capture series


DEFAULT_STUDIES = (
    FixtureStudy("case_001", "PAT-0001"),
    FixtureStudy("case_002", "PAT-0001"),            # second study of the same patient
    FixtureStudy("case_003", "PAT-0002", burned_in_series=True),
    FixtureStudy("case_004", None),                   # no PatientID: split by study
    FixtureStudy("case_005", "PAT-0003", sc_selection=True),
    FixtureStudy("case_006", "PAT-0004"),
    FixtureStudy("case_007", "PAT-0005"),
    FixtureStudy("case_008", "PAT-0006"),
)

ORGANS = ("liver", "kidney", "pancreas", "spleen", "lung", "brain")


@dataclass
class FixtureCorpus:
    root: Path
    pseudonymize: Pseudonymizer
    study_ids: dict[str, str] = field(default_factory=dict)     # key -> study_id
    excluded_series: set[str] = field(default_factory=set)
    sentences: list[tuple[str, str]] = field(default_factory=list)


def _series_row(series_id: str, number: int, *, kept: bool, drop_reason: str | None, burned_in: bool | None,
                sop_class: str = "1.2.840.10008.5.1.4.1.1.2", phase: str = "non_contrast",
                kernel: str | None = "STANDARD") -> dict[str, Any]:
    return {"series_id": series_id, "grouping": "uid", "series_number": number, "modality": "CT",
            "sop_class": sop_class, "description": None, "protocol": None, "image_type": ["ORIGINAL", "PRIMARY"],
            "body_part": "HEAD", "kernel": kernel, "manufacturer": "GE MEDICAL SYSTEMS", "transfer_syntax": None,
            "slice_thickness_mm": 5.0, "pixel_spacing_mm": [0.5, 0.5], "rows": 512, "columns": 512,
            "orientation": "oblique", "gantry_tilt_deg": 18.5, "n_instances": 28, "n_slices": 28,
            "z_min_mm": 0.0, "z_max_mm": 120.0, "slice_spacing_mm": 4.0, "spacing_uniform": False,
            "has_rescale": True, "burned_in_annotation": burned_in, "contrast_agent": None, "contrast_route": None,
            "bolus_delay_s": None, "phase": phase, "phase_confidence": 0.5,
            "phase_evidence": ["no contrast tags"], "kept": kept, "drop_reason": drop_reason, "warnings": [],
            "created_at": NOW}


def copy_fixture_corpus(template: FixtureCorpus, dest: Path, monkeypatch: pytest.MonkeyPatch,
                        key: str) -> tuple[Path, FixtureCorpus]:
    """A writable copy of a module-scoped fixture corpus (tests mutate it), with its key set.

    Writing the corpus once per module and copying it per test keeps the tests independent
    without paying for the real-DICOM PNG rendering every time.
    """
    monkeypatch.setenv(KEY_ENV, key)
    root = dest / "corpus"
    shutil.copytree(template.root, root)
    return root, template


def fixture_corpus_fixtures(key: str, studies: tuple[FixtureStudy, ...] = DEFAULT_STUDIES):
    """``template, corpus = fixture_corpus_fixtures(KEY)`` gives a test module both fixtures: the fixture
    corpus written once per module under ``key`` and a writable copy of it per test
    (:func:`copy_fixture_corpus`)."""

    @pytest.fixture(scope="module")
    def template(tmp_path_factory, data_dir):
        root = tmp_path_factory.mktemp("fixture_corpus") / "corpus"
        return write_fixture_corpus(root, Pseudonymizer(key.encode(), "env"), data_dir, studies)

    @pytest.fixture
    def corpus(template, tmp_path, monkeypatch):
        return copy_fixture_corpus(template, tmp_path, monkeypatch, key)

    return template, corpus


def write_fixture_corpus(root: Path, pseudonymize: Pseudonymizer, data_dir: Path,
                         studies: tuple[FixtureStudy, ...] = DEFAULT_STUDIES, run_id: str = "fixture-run-1",
                         model_id: str = "local:tiny-test-clip") -> FixtureCorpus:
    """Commit all four stages for each study, as a build would."""
    store = CheckpointStore(Path(root))
    fx = FixtureCorpus(Path(root), pseudonymize)
    dicoms = sorted((data_dir / DICOM_DIR).glob("*.dcm"))
    need = sum(s.n_findings for s in studies)
    fx.sentences = clean_caption_sentences(data_dir, need)
    assert len(fx.sentences) == need, "not enough clean ROCO sentences"
    sentence_iter = iter(fx.sentences)
    slice_no = 0
    for study in studies:
        sid = pseudonymize("study", study.key)
        fx.study_ids[study.key] = sid
        findings = []
        for i in range(study.n_findings):
            roco_id, text = next(sentence_iter)
            organ = ORGANS[(slice_no + i) % len(ORGANS)]
            findings.append({
                "study_id": sid, "finding_id": f"{sid}:{i}", "finding_index": i, "section": "findings", "text": text,
                "organ": organ, "organs": [organ], "ts_labels": [organ],
                "status": "abnormal" if i % 2 == 0 else "normal", "statement": None, "abnormalities": [],
                "negated_abnormalities": [], "modifiers": [], "laterality": "left" if i == 1 else None, "measurements_mm": [12.5] if i == 0 else [],
                "phase_hint": None, "image_refs": [], "language": "en", "segmenter": "fixture", "created_at": NOW})
        store.commit_stage("segment", sid, {"findings": findings}, run_id)

        main = pseudonymize("series", f"{study.key}/main")
        sc = pseudonymize("series", f"{study.key}/sc")
        series = [_series_row(main, 2, kept=True, drop_reason=None, burned_in=None),
                  _series_row(sc, 99, kept=False, drop_reason="secondary_capture", burned_in=None,
                              sop_class="1.2.840.10008.5.1.4.1.1.7", kernel=None)]
        fx.excluded_series.add(sc)
        burned = None
        if study.burned_in_series:
            burned = pseudonymize("series", f"{study.key}/burned")
            series.append(_series_row(burned, 3, kept=True, drop_reason=None, burned_in=True))
            fx.excluded_series.add(burned)
        assign = []
        for f in findings:
            target = burned if (burned and f["finding_index"] == study.n_findings - 1) else main
            if study.sc_selection and f["finding_index"] == 0:
                target = sc
            assign.append({"study_id": sid, "finding_id": f["finding_id"], "series_id": target,
                           "phase": "non_contrast", "reason": "fixture", "created_at": NOW})
        patient = pseudonymize("patient", study.patient) if study.patient else None
        studies_row = {"study_id": sid, "patient_id": patient, "report_chars": 400, "n_files": 30, "n_dicom": 28,
                       "n_series": len(series), "n_series_kept": sum(s["kept"] for s in series),
                       "modalities": ["CT"], "run_id": run_id, "created_at": NOW}
        store.commit_stage("series", sid, {"studies": [studies_row], "series": [dict(s, study_id=sid) for s in series],
                                           "assignments": assign}, run_id)

        selections = []
        for f, a in zip(findings, assign):
            dcm = dicoms[slice_no % len(dicoms)]
            slice_no += 1
            image = store.write_image(sid, f"{f['finding_index']:04d}.png", render_dicom_png(dcm))
            top = int(dcm.stem) - 1
            selections.append({
                "study_id": sid, "finding_id": f["finding_id"], "series_id": a["series_id"], "model_id": model_id,
                "weights_sha256": hashlib.sha256(model_id.encode()).hexdigest(), "window": "brain", "n_slices": 28,
                "top1_index": top, "top1_instance_number": top + 1, "top1_z_mm": 4.0 * top, "top1_score": 0.25,
                "topk_indices": [top, (top + 1) % 28], "topk_scores": [0.25, 0.2], "restricted_to": None,
                "z_range_mm": None, "margin": round(0.01 * (top % 5), 4), "peakedness": 2.0,
                "uncertain": top % 5 == 0, "curve": None, "image_path": image, "created_at": NOW})
        store.commit_stage("keyslice", sid, {"selections": selections}, run_id)

        vqa = []
        for f, sel in zip(findings, selections):
            for q, a, atype, qtype, opts in (
                    (f"Is the {f['organ']} abnormal in this image?", "yes" if f["status"] == "abnormal" else "no",
                     "closed", "abnormality", ["yes", "no"]),
                    ("Which organ does the finding concern?", f["organ"], "choice", "organ",
                     sorted({f["organ"], "liver", "spleen", "brain"}))):
                vqa.append({"study_id": sid, "finding_id": f["finding_id"],
                            "qa_id": hashlib.sha256(f"{f['finding_id']}\x1f{atype}\x1f{q}".encode()).hexdigest()[:20],
                            "question": q, "answer": a, "answer_type": atype, "question_type": qtype, "options": opts,
                            "generator": "rule", "prompt_version": None, "series_id": sel["series_id"],
                            "slice_index": sel["top1_index"], "image_path": sel["image_path"], "created_at": NOW})
        store.commit_stage("vqa", sid, {"vqa": vqa}, run_id)
    return fx


# --------------------------------------------------------------------------- fake Hub


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)      # tag -> commit

    @property
    def head(self) -> str:
        return self.commits[-1]


class FakeHub:
    """Just enough of the Hub's HTTP API for ``HfApi.create_repo/repo_info/list_repo_tree/create_commit``."""

    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
                      content_type: str = "application/json"):
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self, method: str):
                url = urlparse(self.path)
                path = unquote(url.path)
                body = self._body() if method in ("POST", "PUT") else b""
                with hub.lock:
                    hub.requests.append((method, path))
                    try:
                        status, payload, headers = hub.handle(method, path, parse_qs(url.query), body,
                                                              f"http://{self.headers['Host']}")
                    except Exception as exc:  # noqa: BLE001 - surface server bugs to the client
                        status, payload, headers = 500, {"error": repr(exc)}, {}
                self._send(status, payload, headers)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_HEAD(self):
                self._dispatch("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- helpers for tests -----------------------------------------------------------
    def writes(self) -> list[tuple[str, str]]:
        """Requests that upload or change something (everything but reads)."""
        return [(m, p) for m, p in self.requests
                if m == "PUT" or (m == "POST" and not p.endswith("/validate-yaml"))]

    def materialize(self, repo_id: str, dest: Path) -> Path:
        for rel, data in self.repos[repo_id].files.items():
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        return dest

    # -- the API ------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: bytes, base: str):
        m = re.fullmatch(r"/api/repos/create", path)
        if m and method == "POST":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{base}/datasets/{repo_id}"}, {}
            repo = FakeRepo(private=data.get("visibility") == "private" or bool(data.get("private")))
            repo.files[".gitattributes"] = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
            repo.commits.append(hashlib.sha1(f"init {repo_id}".encode()).hexdigest())
            self.repos[repo_id] = repo
            return 200, {"url": f"{base}/datasets/{repo_id}", "name": repo_id}, {}
        if path == "/api/validate-yaml" and method == "POST":
            import yaml

            content = json.loads(body)["content"]
            parts = content.split("---")
            try:
                yaml.safe_load(parts[1])
            except Exception as exc:  # noqa: BLE001
                return 400, {"errors": [{"message": str(exc)}]}, {}
            return 200, {"errors": [], "warnings": []}, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+?)(?:/revision/([^/]+))?", path)
        if m and method == "GET":
            repo = self.repos.get(m.group(1))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            return 200, {"id": m.group(1), "sha": repo.head, "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(repo.files)]}, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/refs", path)
        if m and method == "GET":
            repo = self.repos[m.group(1)]
            return 200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
                         "converts": [], "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
                                                  for t, c in sorted(repo.tags.items())]}, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tag/([^/]+)", path)
        if m and method == "POST":
            repo = self.repos[m.group(1)]
            tag, revision = json.loads(body)["tag"], unquote(m.group(2))
            if tag in repo.tags:
                return 409, {"error": f"Tag {tag} already exists"}, {}
            if revision not in repo.commits and revision != "main":
                return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
            repo.tags[tag] = repo.head if revision == "main" else revision
            return 200, {}, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and method == "GET":
            repo = self.repos.get(m.group(1))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            prefix = (m.group(3) or "").strip("/")
            entries, folders = [], set()
            for p in sorted(repo.files):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                data = repo.files[p]
                parent = p.rsplit("/", 1)[0] if "/" in p else ""
                while parent and parent != prefix:
                    folders.add(parent)
                    parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
                entry = {"type": "file", "path": p, "size": len(data), "oid": _git_sha1(data)}
                if p in repo.lfs_paths:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                entries.append(entry)
            entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
            return 200, entries, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if m and method == "POST":
            repo = self.repos[m.group(1)]
            files = []
            for f in json.loads(body)["files"]:
                lfs = f["path"].endswith((".parquet", ".png"))
                old = repo.files.get(f["path"])
                oid = None
                if old is not None:
                    oid = hashlib.sha256(old).hexdigest() if f["path"] in repo.lfs_paths else _git_sha1(old)
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                              "oid": oid})
            return 200, {"files": files}, {}
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            objects = []
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.lfs:
                    entry["actions"] = {"upload": {"href": f"{base}/lfs-put/{obj['oid']}"}}
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        m = re.fullmatch(r"/lfs-put/([0-9a-f]{64})", path)
        if m and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return 400, {"error": "sha256 mismatch"}, {}
            self.lfs[m.group(1)] = body
            return 200, None, {}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", path)
        if m and method == "POST":
            repo = self.repos[m.group(1)]
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = lines[0]["value"]
            if header.get("parentCommit") and header["parentCommit"] != repo.head:
                return 412, {"error": "parent commit is not the head"}, {}
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                if key == "file":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                    repo.lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs:
                        return 422, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                    repo.files[value["path"]] = self.lfs[value["oid"]]
                    repo.lfs_paths.add(value["path"])
                elif key == "deletedFile":
                    if value["path"] not in repo.files:
                        return 404, {"error": "A file with this name doesn't exist"}, {"X-Error-Code": "EntryNotFound"}
                    del repo.files[value["path"]]
                    repo.lfs_paths.discard(value["path"])
                elif key == "deletedFolder":
                    for p in [p for p in repo.files if p.startswith(value["path"].rstrip("/") + "/")]:
                        del repo.files[p]
                        repo.lfs_paths.discard(p)
                else:
                    return 400, {"error": f"unknown operation {key}"}, {}
            oid = hashlib.sha1(body + repo.head.encode()).hexdigest()
            repo.commits.append(oid)
            return 200, {"commitUrl": f"{base}/datasets/{m.group(1)}/commit/{oid}", "commitOid": oid,
                         "success": True}, {}
        return 404, {"error": f"fake hub: no route for {method} {path}"}, {}


# --------------------------------------------------------------------------- round-trip check


def load_config(folder: Path, config: str, cache: Path):
    import datasets

    return datasets.load_dataset(str(folder), config, cache_dir=str(cache))


def _pixels(data_or_image) -> np.ndarray:
    if isinstance(data_or_image, (bytes, bytearray)):
        data_or_image = Image.open(io.BytesIO(data_or_image))
    return np.asarray(data_or_image)


# Expected rows computed independently of keyslice.publish, in SQL over the corpus views.
_EXCLUDE = ("coalesce(se.burned_in_annotation, false) = false "
            "AND coalesce(se.drop_reason, '') <> 'secondary_capture'")
# corpora without a reviews table: every row unreviewed (the review columns are tested on their own)
_UNREVIEWED = "NULL AS review_status, 0 AS n_reviews"
EXPECTED_SQL = {
    "vqa": f"""SELECT v.qa_id, v.finding_id, v.study_id, s.patient_id, v.question, v.answer, v.answer_type,
                      v.question_type, v.options, v.generator, v.prompt_version, v.series_id, se.phase,
                      v.slice_index, v.organ, v.abnormality, v.answer_source, sel.margin, sel.uncertain,
                      {_UNREVIEWED}, v.image_path
               FROM vqa v JOIN studies s USING (study_id) JOIN series se ON se.series_id = v.series_id
               JOIN selections sel ON sel.image_path = v.image_path
               WHERE {_EXCLUDE}""",
    "findings": f"""SELECT f.finding_id, f.study_id, s.patient_id, sel.series_id, f.finding_index, f.section, f.text,
                           f.organ, f.organs, f.status, f.laterality, f.measurements_mm, f.phase_hint, f.language,
                           f.segmenter, se.phase, sel.window, sel.top1_index AS slice_index, f.abnormalities,
                           sel.margin, sel.uncertain, {_UNREVIEWED}, sel.image_path
                    FROM findings f JOIN selections sel USING (finding_id) JOIN studies s ON s.study_id = f.study_id
                    JOIN series se ON se.series_id = sel.series_id WHERE {_EXCLUDE}""",
    "selections": f"""SELECT sel.finding_id, sel.study_id, s.patient_id, sel.series_id, se.phase, se.phase_confidence,
                             se.manufacturer, se.kernel, se.slice_thickness_mm, sel.model_id, sel.weights_sha256,
                             sel.window, sel.n_slices, sel.top1_index, sel.top1_instance_number, sel.top1_z_mm,
                             sel.top1_score, sel.topk_indices, sel.topk_scores, sel.restricted_to, sel.z_range_mm,
                             sel.peakedness, sel.margin, sel.uncertain, {_UNREVIEWED}, sel.image_path
                      FROM selections sel JOIN studies s USING (study_id) JOIN series se ON se.series_id = sel.series_id
                      WHERE {_EXCLUDE}""",
}
KEYS = {"vqa": "qa_id", "findings": "finding_id", "selections": "finding_id"}


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_round_trip(corpus_root: Path, folder: Path, cache: Path, excluded_series: set[str] = frozenset()) -> dict:
    """Every exported row equals its corpus row, every image equals the corpus PNG, no patient in two splits."""
    groups_by_split: dict[str, set[str]] = {}
    seen_studies = set()
    duplicates = 0
    for config, sql in EXPECTED_SQL.items():
        expected = {r[KEYS[config]]: r for r in query(corpus_root, sql).to_pylist()}
        ds = load_config(folder, config, cache)
        got = {}
        for split, part in ds.items():
            for row in part:
                key = row[KEYS[config]]
                assert key not in got, f"{config} row {key} exported twice"
                got[key] = row
                group = row["patient_id"] or row["study_id"]
                groups_by_split.setdefault(split, set()).add(group)
        missing = set(expected) - set(got)
        if config == "vqa":
            # near-duplicate pairs are exported once: every pair left out has an exported twin (same study,
            # series, question and answer up to case/spacing/'?', a slice at most 1 apart)
            for key in missing:
                twin = _near_twin(expected[key], got.values())
                assert twin is not None, f"vqa row {key} left out without an exported near-duplicate"
                assert twin["qa_id"] != key
            duplicates = len(missing)
            missing = set()
        assert not missing and set(got) <= set(expected), f"{config}: exported rows differ from the corpus"
        expected = {k: v for k, v in expected.items() if k in got}
        for key, row in got.items():
            want = dict(expected[key])
            image_path = want.pop("image_path")
            assert _pixels(row.pop("image")).tolist() == _pixels(Image.open(corpus_root / image_path)).tolist()
            assert set(row) == set(want), f"{config} columns {sorted(set(row) ^ set(want))}"
            for col, value in want.items():
                assert _same(row[col], value), f"{config} row {key} column {col}: {row[col]!r} != {value!r}"
            assert row["series_id"] not in excluded_series
            seen_studies.add(row["study_id"])
    splits = sorted(groups_by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not groups_by_split[a] & groups_by_split[b], f"a patient is in both {a} and {b}"
    return {"splits": {s: len(g) for s, g in groups_by_split.items()}, "studies": len(seen_studies),
            "duplicates": duplicates}


def _norm(text) -> str:
    return " ".join(str(text or "").casefold().split()).rstrip(" ?.")


def _near_twin(row: dict, exported) -> dict | None:
    for other in exported:
        if (other["study_id"], other["series_id"], _norm(other["question"]), _norm(other["answer"])) == (
                row["study_id"], row["series_id"], _norm(row["question"]), _norm(row["answer"])) and abs(
                other["slice_index"] - row["slice_index"]) <= 1:
            return other
    return None


@contextlib.contextmanager
def serving_fake_hub(monkeypatch):
    """A :class:`FakeHub` on loopback with the real huggingface_hub client pointed at it (a token, no
    proxy for loopback, no Xet transfers)."""
    import huggingface_hub.constants as constants

    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield fake
