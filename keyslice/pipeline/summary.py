"""What one build run gave the corpus, as plain data and as markdown.

The Prefect flow publishes it as the run's artifacts (flows/build.py), so the Prefect UI shows
each run's result and the nightly runs can be compared there; it is computed here, from the
run's outcomes and the corpus, so that it needs no Prefect and is tested on its own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyslice.corpus.schemas import sql_literal
from keyslice.corpus.sql import VQA_YES_NO_BALANCE, query
from keyslice.pipeline.registry import STAGE_TABLES


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    corpus: str
    started_at: dt.datetime
    finished_at: dt.datetime
    n_studies: int                              # studies the run built (after incremental skipping)
    study_results: dict[str, int]               # studies done / failed / blocked / unchanged (already complete)
    stage_outcomes: dict[str, dict[str, int]]   # stage -> status -> count
    rows_added: dict[str, int]                  # table -> rows written by this run
    failures: list[dict[str, Any]]              # stage, error_type, n (this run's recorded failures)
    vqa_balance: list[dict[str, Any]]           # corpus after the run: generator, n_yes, n_no, yes_share
    phase_mix: dict[str, int]                   # corpus after the run: kept series per contrast phase
    n_input_folders: int | None
    skipped_inputs: dict[str, int]              # reason -> folders

    @property
    def seconds(self) -> float:
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    @property
    def studies_per_hour(self) -> float | None:
        return self.n_studies / self.seconds * 3600 if self.seconds > 0 and self.n_studies else None


def _study_results(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    per_study: dict[str, set[str]] = {}
    for o in outcomes:
        per_study.setdefault(o["study_id"], set()).add(o["status"])
    results = Counter("failed" if "failed" in s else "blocked" if "blocked" in s
                      else "unchanged" if s == {"skipped"} else "done" for s in per_study.values())
    return {r: results[r] for r in ("done", "failed", "blocked", "unchanged")}


def run_summary(corpus_dir: Path | str, result: dict[str, Any]) -> RunSummary:
    """The summary of the run ``result`` (what :func:`keyslice.pipeline.api.execute` returns)."""
    outcomes = result["outcomes"]
    stage_outcomes: dict[str, Counter] = {}
    rows_added: Counter = Counter()
    for o in outcomes:
        stage_outcomes.setdefault(o["stage"], Counter())[o["status"]] += 1
        rows_added.update(o.get("rows") or {})
    tables = [t for stage in STAGE_TABLES.values() for t in stage]
    failures = query(corpus_dir, "SELECT stage, error_type, count(*) AS n FROM failures WHERE run_id = "
                                 f"{sql_literal(result['run_id'])} GROUP BY 1, 2 ORDER BY n DESC, 1, 2").to_pylist()
    phases = query(corpus_dir, "SELECT coalesce(phase, 'unknown') AS phase, count(*) AS n FROM series "
                               "WHERE kept GROUP BY 1 ORDER BY n DESC, 1").to_pylist()
    return RunSummary(
        run_id=result["run_id"], corpus=str(corpus_dir), started_at=result["started_at"],
        finished_at=result["finished_at"], n_studies=result["n_studies"], study_results=_study_results(outcomes),
        stage_outcomes={stage: dict(c) for stage, c in stage_outcomes.items()},
        rows_added={t: rows_added[t] for t in tables},
        failures=failures, vqa_balance=query(corpus_dir, VQA_YES_NO_BALANCE).to_pylist(),
        phase_mix={r["phase"]: r["n"] for r in phases},
        n_input_folders=result.get("n_input_folders"),
        skipped_inputs=dict(Counter(f["reason"] for f in result.get("skipped_inputs") or [])),
    )


def _fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def summary_markdown(s: RunSummary) -> str:
    """The run's result as markdown (the Prefect UI renders it)."""
    studies = ", ".join(f"{n} {r}" for r, n in s.study_results.items())
    lines = [
        f"# keyslice build {s.run_id}",
        "",
        f"**{s.n_studies} studies** processed in {s.seconds:,.0f} s ({_fmt_rate(s.studies_per_hour)} studies/hour): "
        f"{studies}.",
        "",
        "## Rows added per table",
        "",
        "| table | rows added |",
        "|---|---:|",
        *(f"| {t} | {n} |" for t, n in s.rows_added.items()),
        "",
        "## Stage outcomes",
        "",
        "| stage | done | skipped | failed | blocked |",
        "|---|---:|---:|---:|---:|",
        *(f"| {stage} | " + " | ".join(str(c.get(k, 0)) for k in ("done", "skipped", "failed", "blocked")) + " |"
          for stage, c in s.stage_outcomes.items()),
        "",
        "## Failures by stage and error type",
        "",
    ]
    if s.failures:
        lines += ["| stage | error type | failures |", "|---|---|---:|",
                  *(f"| {f['stage']} | {f['error_type']} | {f['n']} |" for f in s.failures)]
    else:
        lines.append("none")
    lines += ["", "## Input folders", ""]
    if s.n_input_folders is None:
        lines.append("not recorded (manifest input)")
    else:
        lines.append(f"{s.n_input_folders} found, {s.n_input_folders - sum(s.skipped_inputs.values())} "
                     f"taken as studies" + "".join(f"; {n} skipped: {r}" for r, n in s.skipped_inputs.items()))
    lines += ["", "## Corpus after this run", "", "VQA yes/no balance (closed questions):", "",
              "| generator | yes | no | yes share |", "|---|---:|---:|---:|",
              *(f"| {b['generator']} | {b['n_yes']} | {b['n_no']} | {b['yes_share']} |" for b in s.vqa_balance),
              "", "Contrast phase of the kept series:", "", "| phase | series |", "|---|---:|",
              *(f"| {p} | {n} |" for p, n in s.phase_mix.items())]
    return "\n".join(lines) + "\n"


def summary_table(s: RunSummary) -> list[dict[str, Any]]:
    """The run's numbers as one metric per row (a Prefect table artifact)."""
    rows: list[dict[str, Any]] = [
        {"metric": "studies processed", "value": s.n_studies},
        *({"metric": f"studies {r}", "value": n} for r, n in s.study_results.items()),
        {"metric": "run time (s)", "value": round(s.seconds, 1)},
        {"metric": "studies per hour", "value": None if s.studies_per_hour is None else round(s.studies_per_hour, 1)},
        *({"metric": f"rows added: {t}", "value": n} for t, n in s.rows_added.items()),
        *({"metric": f"failures: {f['stage']} {f['error_type']}", "value": f["n"]} for f in s.failures),
        *({"metric": f"input folders skipped: {r}", "value": n} for r, n in s.skipped_inputs.items()),
        *({"metric": f"vqa yes share: {b['generator']}", "value": b["yes_share"]} for b in s.vqa_balance),
        *({"metric": f"kept series: {p}", "value": n} for p, n in s.phase_mix.items()),
    ]
    return rows


def artifact_key(corpus_dir: Path | str) -> str:
    """The artifact key of a corpus' build summaries: one key per corpus, so that Prefect keeps the
    runs' summaries as versions of one artifact, side by side."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(corpus_dir).name.lower()).strip("-")[:40] or "corpus"
    return f"keyslice-build-{slug}"
