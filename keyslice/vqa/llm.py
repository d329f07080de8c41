"""LLM-based VQA generation through any OpenAI-compatible chat endpoint.

One request per distinct finding sentence (findings with the same text share it): the
versioned prompt ``prompts/<prompt_version>.md`` with the sentence, a JSON answer checked
against ``schemas/llm/vqa_answer.v1.json``, then semantic checks (a choice answer is among
its options) and a grounding check: the question and answer may name only organs and
numbers that the source sentence contains. An answer that fails any check is sent back
with the problems listed and asked again (``max_repairs`` times) before the finding is
recorded as an :class:`LLMFailure`. Valid answers are cached on disk under the hash of
(prompt version, model, sentence): a rerun sends no request for a sentence already seen.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from keyslice.llm_client import (
    LLMAnswerError,
    LLMError,
    LLMRequestError,
    LLMTransportError,
    Problem,
    ResponseCache,
    RetryPolicy,
    chat_json,
    is_transient_error_type,
    load_json_schema,
    load_prompt,
    make_client,
    schema_errors,
)
from keyslice.vqa.lexicon import find_organs, numbers_in
from keyslice.vqa.rows import make_row, slice_ref

ANSWER_SCHEMA = "vqa_answer.v1"


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    prompt_version: str = "vqa_generate.v1"
    max_concurrency: int = 4
    timeout_s: float = 30
    max_retries: int = 3            # transport retries per request (timeouts, 429, 5xx)
    cache_dir: Path | None = None
    temperature: float = 0.0
    max_repairs: int = 2            # re-asks after an invalid / ungrounded answer
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 60.0
    json_mode: bool = False         # send response_format={"type": "json_object"} (vLLM, OpenAI)


@dataclass(frozen=True)
class LLMFailure:
    """A finding the LLM produced no rows for. ``error_type``: timeout, connection, rate_limit,
    http_<status>, api_error, empty_response (transport) or invalid_json, schema, grounding
    (the model's answer, after ``max_repairs`` re-asks). Failures are never cached: a rerun
    asks again."""

    finding_id: str
    error_type: str
    message: str
    attempts: int = 0

    @property
    def transient(self) -> bool:
        """Worth retrying later (the endpoint was unavailable, not the answer bad)."""
        return is_transient_error_type(self.error_type)

    def as_exception(self) -> LLMError:
        """The failure as an exception, for ``failures`` rows (whose error_type is the class name):
        LLMTransportError (transient), LLMRequestError (the endpoint refused) or LLMAnswerError."""
        if self.transient:
            cls: type[LLMError] = LLMTransportError
        elif self.error_type.startswith("http_") or self.error_type == "api_error":
            cls = LLMRequestError
        else:
            cls = LLMAnswerError
        return cls(self.error_type, f"finding {self.finding_id}: {self.message}", self.attempts)


def check_answer(answer: Any, source_text: str) -> list[Problem]:
    """Problems of a parsed answer: schema, then choice consistency, then grounding."""
    errors = schema_errors(answer, load_json_schema(ANSWER_SCHEMA))
    if errors:
        return [("schema", f"does not match the JSON Schema: {e}") for e in errors]
    problems: list[Problem] = []
    src_organs = set(find_organs(source_text))
    src_numbers = numbers_in(source_text)
    for i, qa in enumerate(answer["qa_pairs"]):
        where = f"qa_pairs[{i}]"
        options = qa.get("options") or []
        if qa["answer_type"] == "choice" and qa["answer"] not in options:
            problems.append(("schema", f"{where}: answer {qa['answer']!r} is not one of its options {options}"))
        text = f"{qa['question']} {qa['answer']}"
        extra_organs = [o for o in find_organs(text) if o not in src_organs]
        if extra_organs:
            problems.append(("grounding", f"{where}: names {', '.join(extra_organs)}, which the finding "
                                          f"sentence does not mention; use only organs it names"))
        extra_numbers = sorted(numbers_in(text) - src_numbers)
        if extra_numbers:
            problems.append(("grounding", f"{where}: contains the number(s) {', '.join(extra_numbers)}, "
                                          f"which the finding sentence does not contain"))
    return problems


class LLMGenerator:
    """VQA rows from an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.prompt = load_prompt(config.prompt_version)
        self.generator = f"llm:{config.model}"
        self.policy = RetryPolicy(max_retries=config.max_retries, backoff_base_s=config.backoff_base_s,
                                  backoff_max_s=config.backoff_max_s,
                                  max_retry_after_s=config.max_retry_after_s)
        self.cache = ResponseCache(Path(config.cache_dir)) if config.cache_dir else None
        # one client for all worker threads (openai clients are thread-safe); no request is made here
        self.client = make_client(config.base_url, api_key_env=config.api_key_env, timeout_s=config.timeout_s)
        self._sleep = sleep
        self._schema_text = json.dumps(load_json_schema(ANSWER_SCHEMA), indent=1)

    def cache_key(self, text: str) -> str:
        return ResponseCache.key(self.config.prompt_version, self.config.model, text)

    # ------------------------------------------------------------ public
    def generate(self, findings: list[dict], selections: list[dict]) -> tuple[list[dict], list[LLMFailure]]:
        """VQA rows for findings that have a key slice, and one failure per finding without rows."""
        sels: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for s in selections:
            sels[str(s["finding_id"])].append(s)
        todo = [f for f in findings if sels.get(str(f["finding_id"])) and str(f.get("text") or "").strip()]
        texts = list(dict.fromkeys(" ".join(str(f["text"]).split()) for f in todo))

        results: dict[str, dict | LLMError] = {}
        if texts:
            with ThreadPoolExecutor(max_workers=max(1, self.config.max_concurrency),
                                    thread_name_prefix="keyslice-llm") as pool:
                for text, result in zip(texts, pool.map(self._answer_or_error, texts)):
                    results[text] = result

        rows: list[dict] = []
        failures: list[LLMFailure] = []
        for f in todo:
            fid = str(f["finding_id"])
            result = results[" ".join(str(f["text"]).split())]
            if isinstance(result, LLMError):
                failures.append(LLMFailure(fid, result.error_type, result.message, result.attempts))
                continue
            for sel in sorted(sels[fid], key=lambda s: (str(s["series_id"]), int(s["top1_index"]))):
                rows.extend(self._rows(fid, result, slice_ref(sel)))
        return rows, failures

    # ------------------------------------------------------------ internals
    def _answer_or_error(self, text: str) -> dict | LLMError:
        try:
            return self.answer(text)
        except LLMError as exc:
            return exc

    def answer(self, text: str) -> dict:
        """The validated answer for one sentence, from the cache or the endpoint."""
        key = self.cache_key(text)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("answer"), dict) and not check_answer(hit["answer"], text):
                return hit["answer"]
        messages = self.prompt.messages(text=text, schema=self._schema_text)
        extra = {"response_format": {"type": "json_object"}} if self.config.json_mode else None
        answer, content, tries = chat_json(
            self.client, model=self.config.model, messages=messages,
            check=lambda a: check_answer(a, text), max_repairs=self.config.max_repairs,
            temperature=self.config.temperature, policy=self.policy, extra=extra, sleep=self._sleep)
        if self.cache is not None:
            self.cache.put(key, {"prompt_version": self.config.prompt_version, "model": self.config.model,
                                 "text": text, "content": content, "answer": answer, "tries": tries})
        return answer

    def _rows(self, finding_id: str, answer: Mapping[str, Any], ref: Mapping[str, Any]) -> list[dict]:
        rows: list[dict] = []
        seen: set[str] = set()
        for qa in answer["qa_pairs"]:
            answer_type = qa["answer_type"]
            value = qa["answer"] if answer_type == "choice" else qa["answer"].strip()
            if answer_type == "closed":
                value = value.lower()
            options = list(qa.get("options") or ()) if answer_type == "choice" else []
            row = make_row(finding_id=finding_id, question=" ".join(qa["question"].split()), answer=value,
                           answer_type=answer_type, question_type=qa["question_type"],
                           options=options,
                           generator=self.generator, prompt_version=self.config.prompt_version, ref=ref)
            if row["qa_id"] not in seen:
                seen.add(row["qa_id"])
                rows.append(row)
        return rows
