"""LLM-based VQA generation through any OpenAI-compatible chat endpoint.

One request per distinct finding (findings with the same sentence and the same structured
fields share it): the versioned prompt ``prompts/<prompt_version>.md`` with the sentence and
what step 1 recorded about it (:class:`FindingFacts`: status, organs, side, abnormality types
asserted and negated, sizes), a JSON answer checked against ``schemas/llm/vqa_answer.v1.json``,
then semantic checks (a choice answer is among its options), a grounding check (the question
and answer may name only organs and numbers that the finding contains) and a consistency
check against the structured fields: an answer naming a negated abnormality or a type the
finding does not assert, a "yes" the finding does not assert (or about one of several organs
of a sentence that negates something), a "no" about an organ the finding does not state
normal, a presence answer on an uncertain finding, a side other than the recorded one or a
size other than ``measurements_mm`` is rejected with its reason. An answer that fails any check is sent back with the problems listed and
asked again (``max_repairs`` times) before the finding is recorded as an
:class:`LLMFailure`. Findings that are not asked about at all (``non_finding``, or neither
organs nor abnormality types) are not sent. Valid answers are cached on disk under the hash
of (prompt version, model, sentence, facts): a rerun sends no request for a finding already seen.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
    chat_json,
    is_transient_error_type,
    load_json_schema,
    load_prompt,
    schema_errors,
)
from keyslice.llm_endpoint import LLMEndpoint
from keyslice.vocab import ABNORMALITY_GROUP, ORGANS, find_abnormalities
from keyslice.vqa.lexicon import find_organs, numbers_in
from keyslice.vqa.rows import make_row, slice_ref
from keyslice.vqa import LLM_PROMPT_VERSION
from keyslice.vqa.rules import ASKED_STATUSES

ANSWER_SCHEMA = "vqa_answer.v1"


@dataclass(frozen=True)
class LLMFailure:
    """A finding the LLM produced no rows for. ``error_type``: timeout, connection, rate_limit,
    http_<status>, api_error, empty_response (transport) or invalid_json, schema, grounding,
    contradiction (the model's answer, after ``max_repairs`` re-asks). Failures are never cached: a rerun
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


@dataclass(frozen=True)
class FindingFacts:
    """What step 1 recorded about a finding: the truth an LLM answer is checked against."""

    status: str = "abnormal"
    organs: tuple[str, ...] = ()
    laterality: str | None = None
    abnormalities: tuple[str, ...] = ()
    negated: tuple[str, ...] = ()
    measurements_mm: tuple[float, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "FindingFacts":
        def types(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(str(t) for t in row.get(name) or () if str(t) in ABNORMALITY_GROUP))

        return cls(status=str(row.get("status") or "uncertain").lower(),
                   organs=tuple(dict.fromkeys(str(o) for o in row.get("organs") or ())),
                   laterality=row.get("laterality") or None,
                   abnormalities=types("abnormalities"), negated=types("negated_abnormalities"),
                   measurements_mm=tuple(float(m) for m in row.get("measurements_mm") or ()))

    @property
    def asked(self) -> bool:
        """Whether the finding is asked about at all (as for the rules: see keyslice.vqa.rules)."""
        return self.status in ASKED_STATUSES and bool(self.organs or self.abnormalities)

    def prompt_values(self) -> dict[str, str]:
        def line(values) -> str:
            return ", ".join(str(v) for v in values) or "none"

        return {"status": self.status, "organs": line(self.organs), "laterality": self.laterality or "none",
                "abnormalities": line(self.abnormalities), "negated": line(self.negated),
                "measurements": line(f"{m:g}" for m in self.measurements_mm)}

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _is_presence(qa: Mapping[str, Any]) -> bool:
    return (qa["answer_type"] == "closed" and qa["answer"].strip().lower() in ("yes", "no")
            and qa["question_type"] in ("organ", "abnormality"))


_SIZE_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def _sizes_mm(answer: str) -> set[float]:
    """The numbers of a size answer in mm (as keyslice.vqa.consistency reads them: cm when it says cm)."""
    factor = 10.0 if re.search(r"\bcms?\b", answer, re.I) else 1.0
    return {round(float(n.replace(",", ".")) * factor, 1) for n in _SIZE_NUMBER.findall(answer)}


def _fact_problems(where: str, qa: Mapping[str, Any], facts: FindingFacts) -> list[Problem]:
    """Contradictions between one pair and the finding's structured fields."""
    problems: list[Problem] = []
    question, answer = qa["question"], qa["answer"].strip()
    value = answer.lower()
    negated_in_answer = [t for t in find_abnormalities(answer) if t in facts.negated]
    if negated_in_answer:
        problems.append(("contradiction", f"{where}: the answer names {', '.join(negated_in_answer)}, which the "
                                          f"finding negates; a negated abnormality is never an answer"))
    unasserted = [t for t in find_abnormalities(answer) if t not in facts.abnormalities and t not in facts.negated]
    if unasserted and value not in ("yes", "no"):
        asserted = ", ".join(facts.abnormalities) or "none"
        problems.append(("contradiction", f"{where}: the answer names {', '.join(unasserted)}, which is not among "
                                          f"the abnormalities the finding asserts ({asserted})"))
    if _is_presence(qa):
        asked_types = find_abnormalities(question)
        asked_organs = [o for o in find_organs(question) if o not in facts.organs]
        if facts.status == "uncertain":
            problems.append(("contradiction", f"{where}: the finding is uncertain; ask no yes/no question about "
                                              f"whether something is present"))
        elif value == "yes":
            if facts.status != "abnormal":
                problems.append(("contradiction", f"{where}: answers yes, but the finding's status is {facts.status}"))
            named = [o for o in find_organs(question) if o in facts.organs]
            if named and facts.negated and len(facts.organs) > 1:
                problems.append(("contradiction", f"{where}: answers yes about {', '.join(named)}, but the finding "
                                                  f"names several organs and negates {', '.join(facts.negated)}: "
                                                  f"it does not say which organ is abnormal"))
            bad = [t for t in asked_types if t not in facts.abnormalities or t in facts.negated]
            if bad:
                problems.append(("contradiction", f"{where}: answers yes about {', '.join(bad)}, which the finding "
                                                  f"does not assert"))
        elif value == "no":
            backed = asked_types and all(t in facts.negated for t in asked_types)
            if not backed and facts.status != "normal":
                problems.append(("contradiction", f"{where}: answers no, but the finding does not state it normal "
                                                  f"(status {facts.status}) nor negate "
                                                  f"{', '.join(asked_types) or 'an abnormality type'}"))
        if asked_organs and facts.organs:
            problems.append(("contradiction", f"{where}: asks whether {', '.join(asked_organs)} is abnormal, but the "
                                              f"finding's organs are {', '.join(facts.organs)}; never claim an "
                                              f"organ normal or abnormal that the finding does not list"))
    if qa["question_type"] == "size":
        sizes = _sizes_mm(answer)
        recorded = {round(m, 1) for m in facts.measurements_mm}
        if sizes - recorded:
            given = ", ".join(f"{v:g}" for v in sorted(sizes))
            known = ", ".join(f"{v:g}" for v in sorted(recorded)) or "no size"
            problems.append(("contradiction", f"{where}: gives the size(s) {given} mm, but the finding records {known}"))
    if qa["answer_type"] == "closed" and value in ("left", "right", "bilateral") and value != facts.laterality:
        problems.append(("contradiction", f"{where}: answers {value}, but the finding's side is "
                                          f"{facts.laterality or 'not recorded'}"))
    return problems


def check_answer(answer: Any, source_text: str, facts: FindingFacts | None = None) -> list[Problem]:
    """Problems of a parsed answer: schema, then choice consistency, grounding and, with
    ``facts``, contradictions with the finding's structured fields."""
    errors = schema_errors(answer, load_json_schema(ANSWER_SCHEMA))
    if errors:
        return [("schema", f"does not match the JSON Schema: {e}") for e in errors]
    problems: list[Problem] = []
    src_organs = set(find_organs(source_text)) | set(facts.organs if facts else ())
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
        if facts is not None:
            problems.extend(_fact_problems(where, qa, facts))
    return problems


def _subject(qa: Mapping[str, Any], facts: FindingFacts) -> dict[str, Any]:
    """The vqa v2 columns of an LLM row: the organ and abnormality type it is about."""
    named = list(dict.fromkeys(find_organs(qa["question"]) or find_organs(qa["answer"])))
    organ = named[0] if len(named) == 1 else (facts.organs[0] if not named and len(facts.organs) == 1 else None)
    closed_yes_no = qa["answer_type"] == "closed" and qa["answer"].strip().lower() in ("yes", "no")
    types = find_abnormalities(qa["question"] if closed_yes_no else qa["answer"])
    abnormality = types[0] if types and (closed_yes_no or qa["question_type"] in ("abnormality", "size")) else None
    info = ORGANS.get(organ or "")
    side = facts.laterality if info is not None and info.paired and facts.laterality in (
        "left", "right", "bilateral") else None
    return {"organ": organ, "organ_side": side, "abnormality": abnormality}


class LLMGenerator:
    """VQA rows from an OpenAI-compatible endpoint; see the module docstring.

    ``endpoint`` says where and how to send requests (shared with the other LLM uses of a
    build); what is this use's own: ``prompt_version`` (the prompt file, recorded in every row
    and part of the cache key), ``max_repairs`` (re-asks after an invalid, ungrounded or
    contradicting answer) and ``cache_dir`` (validated answers; None: no cache).
    """

    def __init__(self, endpoint: LLMEndpoint, *, prompt_version: str = LLM_PROMPT_VERSION, max_repairs: int = 2,
                 cache_dir: Path | None = None, sleep: Callable[[float], None] = time.sleep):
        endpoint.require("LLM VQA generation")
        self.endpoint = endpoint
        self.prompt_version = prompt_version
        self.max_repairs = max_repairs
        self.prompt = load_prompt(prompt_version)
        self.generator = f"llm:{endpoint.model}"
        self.cache = ResponseCache(Path(cache_dir)) if cache_dir else None
        # one client for all worker threads (openai clients are thread-safe); no request is made here
        self.client = endpoint.client()
        self._sleep = sleep
        self._schema_text = json.dumps(load_json_schema(ANSWER_SCHEMA), indent=1)

    def cache_key(self, text: str, facts: FindingFacts | None = None) -> str:
        parts = (text,) if facts is None else (text, facts.key())
        return ResponseCache.key(self.prompt_version, str(self.endpoint.model), *parts)

    # ------------------------------------------------------------ public
    def generate(self, findings: list[dict], selections: list[dict]) -> tuple[list[dict], list[LLMFailure]]:
        """VQA rows for asked findings that have a key slice, and one failure per finding without rows."""
        sels: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for s in selections:
            sels[str(s["finding_id"])].append(s)
        todo = [(f, " ".join(str(f.get("text") or "").split()), FindingFacts.from_row(f)) for f in findings
                if sels.get(str(f["finding_id"]))]
        todo = [(f, text, facts) for f, text, facts in todo if text and facts.asked]
        requests = list(dict.fromkeys((text, facts) for _, text, facts in todo))

        results: dict[tuple[str, FindingFacts], dict | LLMError] = {}
        if requests:
            with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency,
                                    thread_name_prefix="keyslice-llm") as pool:
                for request, result in zip(requests, pool.map(self._answer_or_error, requests)):
                    results[request] = result

        rows: list[dict] = []
        failures: list[LLMFailure] = []
        for f, text, facts in todo:
            fid = str(f["finding_id"])
            result = results[(text, facts)]
            if isinstance(result, LLMError):
                failures.append(LLMFailure(fid, result.error_type, result.message, result.attempts))
                continue
            for sel in sorted(sels[fid], key=lambda s: (str(s["series_id"]), int(s["top1_index"]))):
                rows.extend(self._rows(fid, result, slice_ref(sel), facts))
        return rows, failures

    # ------------------------------------------------------------ internals
    def _answer_or_error(self, request: tuple[str, FindingFacts]) -> dict | LLMError:
        try:
            return self.answer(*request)
        except LLMError as exc:
            return exc

    def answer(self, text: str, facts: FindingFacts | None = None) -> dict:
        """The validated answer for one finding, from the cache or the endpoint."""
        facts = facts or FindingFacts()
        key = self.cache_key(text, facts)

        def check(a: Any) -> list[Problem]:
            return check_answer(a, text, facts)

        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("answer"), dict) and not check(hit["answer"]):
                return hit["answer"]
        messages = self.prompt.messages(text=text, schema=self._schema_text, **facts.prompt_values())
        answer, content, tries = chat_json(self.client, self.endpoint, messages=messages, check=check,
                                           max_repairs=self.max_repairs, sleep=self._sleep)
        if self.cache is not None:
            self.cache.put(key, {"prompt_version": self.prompt_version, "model": self.endpoint.model,
                                 "text": text, "facts": dataclasses.asdict(facts), "content": content,
                                 "answer": answer, "tries": tries})
        return answer

    def _rows(self, finding_id: str, answer: Mapping[str, Any], ref: Mapping[str, Any],
              facts: FindingFacts) -> list[dict]:
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
                           generator=self.generator, prompt_version=self.prompt_version, ref=ref,
                           evidence_finding_id=finding_id, **_subject(qa, facts))
            if row["qa_id"] not in seen:
                seen.add(row["qa_id"])
                rows.append(row)
        return rows
