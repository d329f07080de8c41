"""A small helper around the official ``openai`` client for any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, Azure-style gateways), described by one
:class:`keyslice.llm_endpoint.LLMEndpoint` (address, model, key variable, timeout, retries,
temperature, JSON mode); ``endpoint.client()`` builds the ``openai.OpenAI`` client.

What it adds to ``openai.OpenAI``:

* :func:`chat_completion` - retries timeouts, connection errors, 5xx and 429 with the
  endpoint's exponential backoff; a 429's ``Retry-After`` (or ``retry-after-ms``) header is honoured;
* :func:`chat_json` - asks for a JSON answer, validates it (parse, JSON Schema, caller's
  checks) and, when invalid, sends the errors back in the conversation and asks again;
* :class:`ResponseCache` - validated answers on disk under a content hash, written atomically;
* :func:`load_prompt` - versioned prompt files ``prompts/<name>.v<N>.md``.

Used by ``keyslice.vqa.llm`` and ``keyslice.report.llm_segmenter``; meant for any step that calls an LLM.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import string
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import openai

from keyslice.corpus.atomic import write_bytes_atomic
from keyslice.errors import KeysliceError, TransientError
from keyslice.llm_endpoint import LLMEndpoint
from keyslice.resources import resource_dir


# ---------------------------------------------------------------- errors

TRANSIENT_ERROR_TYPES = frozenset({"timeout", "connection", "rate_limit", "http_408", "http_409"})


def is_transient_error_type(error_type: str) -> bool:
    """Whether a failure of this type may go away on a later run (timeouts, 429, 5xx)."""
    return error_type in TRANSIENT_ERROR_TYPES or (error_type.startswith("http_5") and len(error_type) == 8)


class LLMError(KeysliceError):
    """A call that produced no usable answer. ``error_type`` is a short machine-readable tag."""

    def __init__(self, error_type: str, message: str, attempts: int = 0):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class LLMTransportError(LLMError, TransientError):
    """Timeouts, connection errors, rate limits or 5xx that outlasted the retries."""


class LLMRequestError(LLMError):
    """The endpoint refused the request (4xx other than 408/409/429): retrying will not help."""


class LLMAnswerError(LLMError):
    """The model kept answering invalid JSON, off-schema or ungrounded content."""


# ---------------------------------------------------------------- requests and retries

def retry_after_s(exc: BaseException) -> float | None:
    """Seconds a 429/503 response asks the client to wait (``retry-after-ms`` or ``Retry-After``)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def chat_completion(
    client: openai.OpenAI,
    endpoint: LLMEndpoint,
    *,
    messages: Sequence[Mapping[str, str]],
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The assistant message content of one chat completion, retried on transient errors.

    ``client`` is ``endpoint.client()`` (built once and shared); the model, temperature, JSON
    mode and retries are the endpoint's.
    """
    extra = {"response_format": {"type": "json_object"}} if endpoint.json_mode else {}
    last: tuple[str, str] = ("unknown", "")
    for attempt in range(endpoint.max_retries + 1):
        wait: float | None = None
        try:
            resp = client.chat.completions.create(
                model=endpoint.model, messages=list(messages), temperature=endpoint.temperature, **extra)
            if not resp.choices:
                raise LLMAnswerError("empty_response", "the response has no choices", attempt + 1)
            return resp.choices[0].message.content or ""
        except openai.APITimeoutError as exc:
            last = ("timeout", f"no response within the client timeout ({exc})")
        except openai.APIConnectionError as exc:
            last = ("connection", str(exc))
        except openai.RateLimitError as exc:
            last = ("rate_limit", f"HTTP 429: {_short(exc)}")
            wait = retry_after_s(exc)
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status >= 500 or status in (408, 409):
                last = (f"http_{status}", _short(exc))
                wait = retry_after_s(exc)
            else:
                hint = (" (if the server does not take response_format, set llm.json_mode: false)"
                        if status in (400, 422) and endpoint.json_mode else "")
                raise LLMRequestError(f"http_{status}", _short(exc) + hint, attempt + 1) from exc
        except openai.OpenAIError as exc:  # malformed response body and the like: not retried
            raise LLMRequestError("api_error", f"{type(exc).__name__}: {_short(exc)}", attempt + 1) from exc
        if attempt == endpoint.max_retries:
            break
        delay = endpoint.backoff(attempt)
        if wait is not None:
            delay = max(delay, min(wait, endpoint.max_retry_after_s))
        sleep(delay)
    raise LLMTransportError(last[0], f"{last[1]} (gave up after {endpoint.max_retries + 1} tries)",
                            endpoint.max_retries + 1)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- JSON answers

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S | re.I)


def parse_json_content(content: str) -> Any:
    """The JSON object in a model's reply; tolerates a Markdown code fence around it."""
    text = content.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


@lru_cache(maxsize=None)
def load_json_schema(name: str) -> dict:
    """A JSON Schema from ``schemas/llm/<name>.json`` (``name`` like ``"vqa_answer.v1"``)."""
    path = resource_dir("schemas") / "llm" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(instance: Any, schema: Mapping[str, Any], limit: int = 5) -> list[str]:
    """Human-readable JSON Schema violations (``$.qa_pairs[0].answer_type: 'x' is not one of ...``)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"{where}: {err.message}")
        if len(out) >= limit:
            break
    return out


Problem = tuple[str, str]   # (error_type, message), error_type in {"invalid_json", "schema", ...}


def chat_json(
    client: openai.OpenAI,
    endpoint: LLMEndpoint,
    *,
    messages: Sequence[Mapping[str, str]],
    check: Callable[[Any], list[Problem]],
    max_repairs: int,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Any, str, int]:
    """Ask for a JSON answer until ``check`` finds no problem: (answer, raw content, tries).

    An invalid answer is sent back as the assistant turn, followed by a user turn listing
    the problems; after ``max_repairs`` such rounds :class:`LLMAnswerError` is raised with
    the last problems (``error_type`` of the first one).
    """
    convo = [dict(m) for m in messages]
    problems: list[Problem] = []
    for attempt in range(max_repairs + 1):
        content = chat_completion(client, endpoint, messages=convo, sleep=sleep)
        try:
            answer = parse_json_content(content)
        except ValueError as exc:
            problems = [("invalid_json", f"the reply is not valid JSON ({exc})")]
        else:
            problems = check(answer)
            if not problems:
                return answer, content, attempt + 1
        convo.append({"role": "assistant", "content": content})
        convo.append({"role": "user", "content": repair_message(problems)})
    raise LLMAnswerError(problems[0][0], "; ".join(m for _, m in problems), max_repairs + 1)


def repair_message(problems: Sequence[Problem]) -> str:
    lines = "\n".join(f"- {msg}" for _, msg in problems)
    return ("Your previous reply was rejected:\n" + lines +
            "\nReply again with one corrected JSON object only, no other text.")


# ---------------------------------------------------------------- cache

class ResponseCache:
    """Validated answers on disk, one JSON file per key, written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        data = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")
        write_bytes_atomic(self.path(key), data)


# ---------------------------------------------------------------- prompts

@dataclass(frozen=True)
class Prompt:
    version: str        # file stem, e.g. "vqa_generate.v1"
    system: str
    user: str           # string.Template: ``$name`` placeholders

    def messages(self, **values: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": string.Template(self.system).substitute(values)},
            {"role": "user", "content": string.Template(self.user).substitute(values)},
        ]


_SECTION = re.compile(r"^##\s+(system|user)\s*$", re.M | re.I)


@lru_cache(maxsize=None)
def load_prompt(version: str) -> Prompt:
    """Read ``prompts/<version>.md``: a ``## system`` and a ``## user`` section.

    The file name carries the version; text before the first section is a comment for
    humans and is not sent. Placeholders use ``$name`` (``string.Template``).
    """
    if not re.fullmatch(r"[\w-]+\.v\d+", version):
        raise ValueError(f"prompt version must look like 'name.v1', got {version!r}")
    path = resource_dir("prompts") / f"{version}.md"
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found; prompt versions available: "
                                f"{sorted(p.stem for p in path.parent.glob('*.md'))}")
    text = path.read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    sections = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if "system" not in sections or "user" not in sections:
        raise ValueError(f"{path}: needs a '## system' and a '## user' section")
    return Prompt(version, sections["system"], sections["user"])
