"""Where and how keyslice talks to an OpenAI-compatible chat server: one frozen dataclass.

Every use of an LLM (VQA generation in :mod:`keyslice.vqa.llm`, the optional report
segmenter in :mod:`keyslice.report.llm_segmenter`) takes an :class:`LLMEndpoint` plus its own
small settings (prompt version, repair rounds), so that the server address, key, timeout,
retries, temperature and JSON mode are set once, in one place, and both uses send requests
the same way. A build holds one endpoint (``BuildConfig.llm``, the ``llm:`` mapping of the
YAML config) and hands it to both uses.

Plain data only: this module does not import the ``openai`` client (importing the build
config stays cheap); :meth:`LLMEndpoint.client` imports it when a client is built.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import openai


@dataclass(frozen=True)
class LLMEndpoint:
    """An OpenAI-compatible chat endpoint (vLLM, Ollama ``/v1``, OpenAI, Azure-style gateways).

    Off (:attr:`enabled` false) until ``base_url`` and ``model`` are both set.

    ``timeout_s`` defaults to 60 s, the time one request may take before it is abandoned and
    retried. The request it is sized for is the common one: a local vLLM writing the JSON
    answer for one finding sentence, a few question-answer pairs of up to ~400 output tokens
    after a ~1.5k-token prompt (the answer schema is embedded). A 7-8B model decodes ~20-60
    tokens/s per sequence while vLLM batches the requests of a build (``max_workers`` studies
    times ``max_concurrency`` requests, 16 at once with the defaults), so such an answer takes
    ~7-20 s, more behind a busy queue. 30 s would leave too little margin: a timeout does not stop
    the server's work, it resends the whole request, which adds load exactly when the server
    is already slow. 60 s is three times the slow estimate and also covers the longest request
    a build sends, the LLM segmenter's answer for a whole report (one unit per sentence, ~1k
    tokens). A server that is down is noticed at once (connection refused), not by the
    timeout; a hung one costs at most ``timeout_s * (max_retries + 1)`` per request before the
    failure is recorded.

    Retries (timeouts, connection errors, 429 and 5xx; not other 4xx): ``max_retries`` after
    the first try, waiting ``backoff_base_s * 2**n`` (capped at ``backoff_max_s``, plus up to
    10% jitter) before retry ``n``, or longer when the server's ``Retry-After`` asks for it (up
    to ``max_retry_after_s``). The ``openai`` client's own retries are switched off so that
    these are the only ones.

    ``json_mode`` sends ``response_format={"type": "json_object"}``: vLLM, Ollama, llama.cpp's
    server and OpenAI then constrain decoding to JSON, so fewer answers need a repair round.
    Both uses ask for JSON, hence on by default; set it false for a server that refuses the
    parameter (it answers HTTP 400).

    ``max_concurrency``: requests one VQA generator (one study's step) keeps in flight.
    """

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"    # the NAME of the variable holding the key
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 60.0
    max_concurrency: int = 4
    temperature: float = 0.0
    json_mode: bool = True

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_retries < 0 or self.max_concurrency < 1:
            raise ValueError(f"LLMEndpoint needs timeout_s > 0, max_retries >= 0 and max_concurrency >= 1, got "
                             f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
                             f"max_concurrency={self.max_concurrency}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LLMEndpoint":
        """An endpoint from a mapping of its fields (the ``llm:`` section of a build config)."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown llm key(s): {unknown}; known: {known}")
        return cls(**data)

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)

    def require(self, use: str) -> None:
        """Raise a ValueError that says what to set when the endpoint is off."""
        if not self.enabled:
            raise ValueError(f"{use} needs an OpenAI-compatible endpoint: set llm.base_url and llm.model in the "
                             f"build config (keyslice.llm_endpoint.LLMEndpoint(base_url=..., model=...) from Python)")

    def client(self) -> "openai.OpenAI":
        """The ``openai.OpenAI`` client for this endpoint, its own retries off; no request is made.

        The key is read from ``api_key_env`` now; local servers (vLLM, Ollama) accept any key,
        so "EMPTY" is sent when the variable is unset. One client may serve many threads.
        """
        import openai

        self.require("an LLM client")
        api_key = os.environ.get(self.api_key_env) or "EMPTY"
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=self.timeout_s, max_retries=0)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (0-based) when the server gave no Retry-After."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** retry))
        return delay * (1.0 + 0.1 * random.random())
