"""A small scripted OpenAI-compatible chat server for tests (no model behind it).

``POST /v1/chat/completions`` answers with the next scripted :class:`Reply` of its queue
(or, when the queue is empty, with ``fallback(request)`` if set, else HTTP 500). Every
request body is recorded, and the largest number of requests in flight at once is kept
so that tests can check a client's concurrency limit. Runs on 127.0.0.1, port 0 (the OS
picks a free port), in a background thread::

    with ScriptedLLMServer() as server:
        server.push(Reply.ok({"qa_pairs": [...]}), Reply.rate_limited(retry_after=1))
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    status: int = 200
    content: str | None = None          # assistant message content (status 200)
    delay_s: float = 0.0                # wait this long before answering
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None            # raw JSON body for non-200 replies

    @classmethod
    def ok(cls, answer: Any, delay_s: float = 0.0) -> "Reply":
        """A 200 whose content is ``answer`` (JSON-encoded unless already a string)."""
        content = answer if isinstance(answer, str) else json.dumps(answer)
        return cls(content=content, delay_s=delay_s)

    @classmethod
    def invalid_json(cls) -> "Reply":
        return cls(content='Sure! Here are the pairs: {"qa_pairs": [{"question": "Is there')

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> "Reply":
        return cls(status=429, headers={"Retry-After": f"{retry_after:g}"},
                   body={"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                   "code": "rate_limit_exceeded"}})

    @classmethod
    def error(cls, status: int, message: str = "scripted error") -> "Reply":
        return cls(status=status, body={"error": {"message": message, "type": "server_error"}})


class ScriptedLLMServer:
    def __init__(self, fallback: Callable[[dict], Reply] | None = None):
        self.queue: deque[Reply] = deque()
        self.fallback = fallback
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ script
    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    def _next(self, request: dict) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        if self.fallback is not None:
            return self.fallback(request)
        return Reply.error(500, "script exhausted: no reply queued for this request")

    # ------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ScriptedLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                with server._lock:
                    server.requests.append({"body": request, "received_at": time.monotonic(),
                                            "authorization": self.headers.get("Authorization")})
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    reply = server._next(request)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    if reply.status == 200:
                        self._send(200, _completion(request.get("model", "test"), reply.content or ""), reply.headers)
                    else:
                        self._send(reply.status, reply.body or {"error": {"message": "error"}}, reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llm-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers for assertions
    def user_texts(self) -> list[str]:
        """The last user message of every request, in arrival order."""
        out = []
        for r in self.requests:
            users = [m["content"] for m in r["body"].get("messages", []) if m.get("role") == "user"]
            out.append(users[-1] if users else "")
        return out


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
