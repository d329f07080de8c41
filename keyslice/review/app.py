"""The review web app (Starlette): one page, a small JSON API, images served from the corpus only.

Security model
    * It listens on 127.0.0.1 unless told otherwise. On any other host a token is required on
      every request (``?token=`` once, then an HttpOnly SameSite=Strict cookie, or the
      ``X-Keyslice-Token`` header).
    * Every state-changing request is a POST that must carry the token in the
      ``X-Keyslice-Token`` header, also on 127.0.0.1: the page gets it embedded in its HTML, which a
      foreign page cannot read (same-origin policy), and a cross-site form or ``fetch`` cannot set
      that header without a CORS preflight, which this app never grants. ``Host`` is checked
      (DNS rebinding).
    * Images come only from ``CORPUS/images`` (resolved paths, ``..`` and links outside refused) or
      are rendered from a series the corpus' selections name (:mod:`keyslice.review.slices`).
    * A decision is validated against the finding, series and selection it names: a stale page
      (the selection was rebuilt meanwhile) gets 409 instead of recording a judgement of slices
      it did not show.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keyslice import __version__
from keyslice.review.queue import ORDERS, Corpus, order_items, queue_entry
from keyslice.review.store import DECISIONS, JUDGEMENTS, ReviewStore

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "x-keyslice-token"
TOKEN_COOKIE = "keyslice_token"
APP_VERSION = f"keyslice-review {__version__}"


def static_dir() -> Path:
    return Path(str(resources.files("keyslice.review") / "static"))


@dataclass
class ReviewState:
    corpus: Corpus
    store: ReviewStore
    pseudonymize: Any
    slices: Any = None                      # SliceSource, or None without --input
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    token_required: bool = False            # on every request (a non-local host), not only POSTs
    reviewers: dict[str, str] = field(default_factory=dict)   # pseudonym -> shown label (initials)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _token_ok(state: ReviewState, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), state.token.encode())


class TokenMiddleware:
    """POSTs always need the token header; with ``token_required`` every request needs the token."""

    def __init__(self, app, state: ReviewState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        header = request.headers.get(TOKEN_HEADER)
        if request.method not in ("GET", "HEAD"):
            ok = _token_ok(self.state, header)
        elif self.state.token_required:
            ok = any(_token_ok(self.state, t) for t in
                     (header, request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)))
        else:
            ok = True
        if not ok:
            return await _error(403, "missing or wrong token").__call__(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(state: ReviewState, allowed_hosts: list[str] | None = None) -> Starlette:
    index_html = (static_dir() / "index.html").read_text()
    images_root = (state.corpus.root / "images").resolve()

    def item_or_404(finding_id: str | None) -> dict:
        if not finding_id or finding_id not in state.corpus.items:
            raise _NotFound(f"no selection for finding {finding_id!r} in this corpus")
        return state.corpus.items[finding_id]

    async def index(request: Request) -> Response:
        html = index_html.replace("__KEYSLICE_TOKEN__", state.token).replace("__KEYSLICE_VERSION__", APP_VERSION)
        response = HTMLResponse(html, headers={"Cache-Control": "no-store",
                                               "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                                                          "style-src 'self'; script-src 'self'; "
                                                                          "frame-ancestors 'none'",
                                               "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})
        if state.token_required:
            response.set_cookie(TOKEN_COOKIE, state.token, httponly=True, samesite="strict")
        return response

    async def session(request: Request) -> Response:
        body = await _json(request)
        name = str(body.get("name", "")).strip()
        if not name or len(name) > 200:
            return _error(400, "give your name (1-200 characters); only its keyed hash is stored")
        reviewer = state.pseudonymize("reviewer", " ".join(name.casefold().split()))
        with state.lock:
            state.reviewers[reviewer] = "".join(w[0] for w in name.split())[:4].upper()
        return JSONResponse({"reviewer": reviewer, "label": state.reviewers[reviewer], "orders": list(ORDERS),
                             "slices": state.slices is not None, "app_version": APP_VERSION})

    def standing(reviewer: str) -> dict[str, dict]:
        """finding_id -> this reviewer's standing judgement of the finding's current selection."""
        out = {}
        for (fid, sha), row in state.store.standing(reviewer).items():
            item = state.corpus.items.get(fid)
            if item is not None and item["selection_sha256"] == sha:
                out[fid] = row
        return out

    def progress_of(reviewer: str) -> dict:
        done = standing(reviewer)
        accepted = sum(1 for r in done.values() if r["decision"] == "accept")
        return {"total": len(state.corpus.items), "reviewed": len(done), "accepted": accepted,
                "acceptance": accepted / len(done) if done else None}

    async def queue(request: Request) -> Response:
        reviewer = request.query_params.get("reviewer", "")
        order = request.query_params.get("order", "uncertain")
        if order not in ORDERS:
            return _error(400, f"order must be one of {', '.join(ORDERS)}")
        state.store.refresh()
        done = standing(reviewer)
        pending = [r for fid, r in state.corpus.items.items() if fid not in done]
        return JSONResponse({"items": [queue_entry(r) for r in order_items(pending, order, seed=reviewer)],
                             "progress": progress_of(reviewer)})

    async def progress(request: Request) -> Response:
        return JSONResponse(progress_of(request.query_params.get("reviewer", "")))

    async def finding(request: Request) -> Response:
        item = item_or_404(request.query_params.get("id"))
        keys = ("finding_id", "study_id", "series_id", "model_id", "weights_sha256", "window", "n_slices",
                "top1_index", "top1_z_mm", "top1_score", "topk_indices", "topk_scores", "restricted_to",
                "z_range_mm", "margin", "peakedness", "uncertain", "text", "organ", "organs", "status",
                "laterality", "measurements_mm", "phase_hint", "phase", "kernel", "slice_thickness_mm",
                "selection_sha256", "finding_index", "z_min_mm", "z_step_mm")
        out = {k: item.get(k) for k in keys}
        out["curve"] = state.corpus.curve(item["finding_id"])
        out["key_image"] = "/images/" + item["image_path"].removeprefix("images/")
        out["slices"] = state.slices is not None and state.slices.has_study(item["study_id"])
        return JSONResponse(out)

    async def geometry(request: Request) -> Response:
        item = item_or_404(request.query_params.get("id"))
        if state.slices is None or not state.slices.has_study(item["study_id"]):
            return _error(404, "slices are not available: start keyslice review with --input STUDIES_DIR")
        from keyslice.review.slices import SeriesMismatchError

        try:
            z = await run_in_threadpool(state.slices.z_mm, item["study_id"], item["series_id"], item["n_slices"])
        except SeriesMismatchError as exc:
            return _error(409, str(exc))
        return JSONResponse({"z_mm": z})

    async def slice_png(request: Request) -> Response:
        item = item_or_404(request.query_params.get("id"))
        try:
            index = int(request.query_params.get("index", ""))
        except ValueError:
            return _error(400, "index must be an integer")
        if not 0 <= index < item["n_slices"]:
            return _error(404, f"slice {index} is outside the series (0..{item['n_slices'] - 1})")
        if state.slices is None or not state.slices.has_study(item["study_id"]):
            return _error(404, "slices are not available: start keyslice review with --input STUDIES_DIR")
        from keyslice.review.slices import SeriesMismatchError

        try:
            data = await run_in_threadpool(state.slices.png, item["study_id"], item["series_id"], item["n_slices"],
                                           index, item["window"])
        except SeriesMismatchError as exc:
            return _error(409, str(exc))
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def image(request: Request) -> Response:
        rel = request.path_params["path"]
        try:
            path = (images_root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            return _error(404, "no such image")
        if not path.is_relative_to(images_root) or path.suffix.lower() != ".png" or not path.is_file():
            return _error(404, "no such image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def decision(request: Request) -> Response:
        body = await _json(request)
        reviewer = body.get("reviewer")
        if reviewer not in state.reviewers:
            return _error(400, "unknown reviewer: start a session (POST /api/session) first")
        kind = body.get("decision")
        if kind not in DECISIONS:
            return _error(400, f"decision must be one of {', '.join(DECISIONS)}")
        item = item_or_404(body.get("finding_id"))
        if body.get("series_id") != item["series_id"]:
            return _error(400, f"finding {item['finding_id']} was selected on series {item['series_id']}, "
                               f"not {body.get('series_id')!r}")
        current = await run_in_threadpool(state.corpus.current_sha256, item["finding_id"])
        if current is None or body.get("selection_sha256") != current:
            return _error(409, "this selection has changed since the page loaded it (the corpus was rebuilt): "
                               "reload the page")
        row = {"study_id": item["study_id"], "finding_id": item["finding_id"], "series_id": item["series_id"],
               "model_id": item["model_id"], "weights_sha256": item["weights_sha256"],
               "selection_top1_index": item["top1_index"], "selection_top1_z_mm": item["top1_z_mm"],
               "selection_sha256": item["selection_sha256"], "reviewer": reviewer, "decision": kind,
               "chosen_index": None, "chosen_z_mm": None, "undoes": None, "app_version": APP_VERSION}
        if kind == "accept":
            row["chosen_index"], row["chosen_z_mm"] = item["top1_index"], item["top1_z_mm"]
        elif kind == "choose":
            chosen = body.get("chosen_index")
            if not isinstance(chosen, int) or isinstance(chosen, bool) or not 0 <= chosen < item["n_slices"]:
                return _error(400, f"chosen_index must be a slice of the series (0..{item['n_slices'] - 1})")
            can_see = state.slices is not None and state.slices.has_study(item["study_id"])
            if not can_see and chosen not in item["topk_indices"]:
                return _error(400, "without the studies (--input) only the top-k slices can be chosen")
            row["chosen_index"] = chosen
            row["chosen_z_mm"] = state.corpus.z_of(item["finding_id"], chosen)
            if row["chosen_z_mm"] is None and can_see:
                z = await run_in_threadpool(state.slices.z_mm, item["study_id"], item["series_id"], item["n_slices"])
                row["chosen_z_mm"] = z[chosen]
        elif kind == "undo":
            target = state.store.get(str(body.get("undoes")))
            if target is None:  # perhaps made through another server on the same corpus
                await run_in_threadpool(state.store.refresh)
                target = state.store.get(str(body.get("undoes")))
            if target is None or target["reviewer"] != reviewer or target["finding_id"] != item["finding_id"]:
                return _error(400, "undo must name an earlier decision of the same reviewer on the same finding")
            if target["decision"] not in JUDGEMENTS + ("skip",):
                return _error(400, "an undo cannot be undone; decide again instead")
            if state.store.is_undone(target["review_id"]):
                return _error(409, "that decision is already undone")
            row["undoes"] = target["review_id"]
        stored = await run_in_threadpool(state.store.append, row)
        return JSONResponse({"review_id": stored["review_id"], "decision": kind,
                             "progress": progress_of(reviewer)}, status_code=201)

    routes = [
        Route("/", index),
        Route("/api/session", session, methods=["POST"]),
        Route("/api/queue", queue),
        Route("/api/progress", progress),
        Route("/api/finding", finding),
        Route("/api/geometry", geometry),
        Route("/api/slice", slice_png),
        Route("/api/decision", decision, methods=["POST"]),
        Route("/images/{path:path}", image),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
    ]
    hosts = allowed_hosts or list(LOCAL_HOSTS)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(TokenMiddleware, state=state)]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={_NotFound: lambda request, exc: _error(404, str(exc)),
                                         _BadJSON: lambda request, exc: _error(400, str(exc))})


class _NotFound(Exception):
    pass


class _BadJSON(Exception):
    pass


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _BadJSON("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise _BadJSON("the request body must be a JSON object")
    return body


def open_state(corpus: Path, input_dir: Path | None = None, *, token: str | None = None,
               token_required: bool = False) -> ReviewState:
    """Everything the app serves: the corpus' selections, its reviews, the corpus key, the studies."""
    from keyslice.pseudonym import load_pseudonymizer

    pseudonymize = load_pseudonymizer(Path(corpus), create=False)
    store = ReviewStore(Path(corpus))
    store.refresh()
    slices = None
    if input_dir is not None:
        from keyslice.review.slices import SliceSource

        slices = SliceSource(Path(corpus), Path(input_dir), pseudonymize)
    state = ReviewState(Corpus.load(Path(corpus)), store, pseudonymize, slices, token_required=token_required)
    if token:
        state.token = token
    return state
