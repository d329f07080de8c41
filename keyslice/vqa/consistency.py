"""Does every VQA answer agree with the finding it rests on? One DuckDB query over the corpus.

A VQA row (``vqa`` table v2) records what its answer rests on: ``organ`` / ``organ_side``,
``abnormality``, ``evidence_finding_id`` (null: the row's own finding) and ``answer_source``.
The query joins these to the structured fields of the ``findings`` table and lists every
answer the report contradicts, one row per (answer, kind of contradiction):

==========================  ===================================================================
kind                        the answer ...
==========================  ===================================================================
question_on_non_finding     is about a finding whose status is ``non_finding`` (communication,
                            technique, comparison, ...): such sentences are never asked about
no_but_abnormal             is "no" to "Is there (a <type> | an abnormality) in <organ>?" while
                            an abnormal or uncertain finding of the report names that organ on
                            an overlapping side (and, for a type, asserts that type)
no_not_stated_normal        is "no" about an organ no finding of the report states as normal
                            (nor, for a type, negates that type for the organ); rows marked
                            ``answer_source = 'mask'`` are exempt: they are labelled assumptions
yes_not_abnormal            is "yes" to a presence question while the evidence finding is not
                            abnormal (normal, uncertain, ...) or does not name the organ
yes_but_negated             is "yes" to "Is there a <type> ...?" for a type the evidence finding
                            negates, or does not assert
type_answer_negated         names an abnormality type the evidence finding negates
type_answer_not_asserted    names an abnormality type the evidence finding does not assert
laterality_mismatch         gives a side other than the evidence finding's laterality
size_mismatch               gives a size whose numbers are not the finding's measurements_mm
==========================  ===================================================================

A presence question is a closed yes/no row of question type ``organ`` or ``abnormality``
with an ``organ``. Sides: a statement about an organ without a side (or "bilateral")
covers both sides; the side of a finding's organ is its ``laterality`` when the organ is
paired (the list is the VQA lexicon's paired organs).

Rows written before ``vqa`` v2 have no ``organ`` or ``answer_source``: presence checks
cannot place them and :func:`check_corpus` counts them as ``unchecked`` (rebuild with
``--force-stage vqa`` to check them); an old rule row answering "What type of
abnormality ...?" is still checked, its answer being the type. Findings files without
the structured columns (``abnormalities``, ``negated_abnormalities``: before findings
v2) read as empty lists, so every type answer on them is reported as not asserted.

Use :data:`VQA_CONTRADICTIONS` with ``keyslice sql`` on a corpus whose findings have the
v2 columns, or :func:`check_corpus` / ``keyslice check --out CORPUS``, which adapts to the
columns present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import duckdb
import pyarrow as pa

from keyslice.vocab import ORGANS

KINDS = (
    "question_on_non_finding",
    "no_but_abnormal",
    "no_not_stated_normal",
    "yes_not_abnormal",
    "yes_but_negated",
    "type_answer_negated",
    "type_answer_not_asserted",
    "laterality_mismatch",
    "size_mismatch",
)

# structured finding columns the query reads, with what a findings file without them reads as
FINDING_COLUMNS: dict[str, str] = {
    "study_id": "NULL::VARCHAR",
    "finding_id": "NULL::VARCHAR",
    "status": "NULL::VARCHAR",
    "laterality": "NULL::VARCHAR",
    "organs": "[]::VARCHAR[]",
    "measurements_mm": "[]::FLOAT[]",
    "abnormalities": "[]::VARCHAR[]",
    "negated_abnormalities": "[]::VARCHAR[]",
}


def _paired_literal() -> str:
    names = sorted(o.name for o in ORGANS.values() if o.paired)
    return "[" + ", ".join("'" + n.replace("'", "''") + "'" for n in names) + "]::VARCHAR[]"


def contradictions_sql(finding_columns: Iterable[str] | None = None) -> str:
    """The query, for a ``findings`` view with ``finding_columns`` (None: all of them)."""
    have = set(FINDING_COLUMNS) if finding_columns is None else set(finding_columns)
    cols = ",\n         ".join(
        (f"coalesce({c}, {d}) AS {c}" if c in ("organs", "measurements_mm", "abnormalities",
                                             "negated_abnormalities") else c)
        if c in have else f"{d} AS {c}"
        for c, d in FINDING_COLUMNS.items())
    return f"""\
WITH f AS (
  SELECT {cols}
  FROM findings
),
fo AS (   -- one row per finding and organ, with the organ's side
  SELECT *, CASE WHEN list_contains({_paired_literal()}, organ)
                  AND laterality IN ('left', 'right', 'bilateral') THEN laterality END AS side
  FROM (SELECT *, unnest(organs) AS organ FROM f)
),
q AS (
  SELECT v.study_id, v.finding_id, v.qa_id, v.generator, v.question, v.answer, v.answer_type,
         v.question_type, v.organ, v.organ_side, v.answer_source,
         coalesce(v.evidence_finding_id, v.finding_id) AS eid,
         lower(trim(v.answer)) AS ans,
         coalesce(v.abnormality,
                  CASE WHEN v.generator = 'rule' AND (v.question ILIKE 'what type of abnormality%'
                                                      OR v.question ILIKE 'what abnormality is seen%')
                       THEN lower(v.answer) END) AS abn,
         v.answer_type = 'closed' AND lower(trim(v.answer)) IN ('yes', 'no')
           AND v.question_type IN ('organ', 'abnormality') AND v.organ IS NOT NULL AS presence
  FROM vqa v
),
qe AS (   -- each answer with its evidence finding
  SELECT q.*, e.status AS e_status, e.laterality AS e_laterality, e.measurements_mm AS e_measurements,
         e.abnormalities AS e_abnormalities, e.negated_abnormalities AS e_negated,
         list_contains(e.organs, q.organ) AS e_names_organ
  FROM q LEFT JOIN f e ON e.finding_id = q.eid
),
found AS (
  SELECT 'question_on_non_finding' AS kind, qe.*, 'asked about a non_finding sentence' AS detail
  FROM qe
  WHERE EXISTS (SELECT 1 FROM f WHERE f.finding_id IN (qe.finding_id, qe.eid) AND f.status = 'non_finding')
  UNION ALL
  SELECT 'no_but_abnormal', qe.*, 'finding ' || min(fo.finding_id) || ' is ' || min(fo.status)
  FROM qe JOIN fo ON fo.study_id = qe.study_id AND fo.organ = qe.organ
                 AND fo.status IN ('abnormal', 'uncertain')
                 AND (fo.side IS NULL OR fo.side = 'bilateral' OR qe.organ_side IS NULL
                      OR qe.organ_side = 'bilateral' OR fo.side = qe.organ_side)
                 AND (qe.abn IS NULL OR list_contains(fo.abnormalities, qe.abn))
  WHERE qe.presence AND qe.ans = 'no'
  GROUP BY ALL
  UNION ALL
  SELECT 'no_not_stated_normal', qe.*, 'no finding of the report states ' || qe.organ
         || coalesce(' (' || qe.organ_side || ')', '') || ' normal'
         || coalesce(' or negates ' || qe.abn, '')
  FROM qe
  WHERE qe.presence AND qe.ans = 'no' AND coalesce(qe.answer_source, 'finding') <> 'mask'
    AND NOT EXISTS (
      SELECT 1 FROM fo
      WHERE fo.study_id = qe.study_id AND fo.organ = qe.organ
        AND ((fo.status = 'normal'
              AND (fo.side IS NULL OR fo.side = 'bilateral' OR fo.side = qe.organ_side))
          OR (qe.abn IS NOT NULL AND fo.status <> 'non_finding' AND list_contains(fo.negated_abnormalities, qe.abn)
              AND (fo.side IS NULL OR fo.side = 'bilateral' OR qe.organ_side IS NULL
                   OR qe.organ_side = 'bilateral' OR fo.side = qe.organ_side))))
  UNION ALL
  SELECT 'yes_not_abnormal', qe.*, 'evidence finding ' || qe.eid || ' is '
         || coalesce(qe.e_status, 'missing') || CASE WHEN qe.e_names_organ THEN '' ELSE ', does not name '
         || qe.organ END
  FROM qe
  WHERE qe.presence AND qe.ans = 'yes'
    AND (qe.e_status IS DISTINCT FROM 'abnormal' OR NOT coalesce(qe.e_names_organ, false))
  UNION ALL
  SELECT 'yes_but_negated', qe.*, 'evidence finding ' || qe.eid
         || CASE WHEN list_contains(qe.e_negated, qe.abn) THEN ' negates ' ELSE ' does not assert ' END || qe.abn
  FROM qe
  WHERE qe.presence AND qe.ans = 'yes' AND qe.abn IS NOT NULL
    AND (list_contains(qe.e_negated, qe.abn) OR NOT coalesce(list_contains(qe.e_abnormalities, qe.abn), false))
  UNION ALL
  SELECT CASE WHEN list_contains(qe.e_negated, qe.abn) THEN 'type_answer_negated'
              ELSE 'type_answer_not_asserted' END,
         qe.*, 'evidence finding ' || qe.eid || ' asserts ' || to_json(qe.e_abnormalities)
         || ', negates ' || to_json(qe.e_negated)
  FROM qe
  WHERE qe.question_type = 'abnormality' AND qe.abn IS NOT NULL AND qe.ans NOT IN ('yes', 'no')
    AND (list_contains(qe.e_negated, qe.abn) OR NOT coalesce(list_contains(qe.e_abnormalities, qe.abn), false))
  UNION ALL
  SELECT 'laterality_mismatch', qe.*, 'evidence finding ' || qe.eid || ' laterality is '
         || coalesce(qe.e_laterality, 'null')
  FROM qe
  WHERE qe.question_type = 'laterality' AND qe.ans IN ('left', 'right', 'bilateral')
    AND qe.ans IS DISTINCT FROM qe.e_laterality
  UNION ALL
  SELECT 'size_mismatch', qe.*, 'evidence finding ' || qe.eid || ' measurements_mm are '
         || to_json(qe.e_measurements)
  FROM qe
  WHERE qe.question_type = 'size'
    AND len(list_filter(
          list_transform(regexp_extract_all(qe.answer, '\\d+(?:\\.\\d+)?'),
                         lambda x: round(CAST(x AS DOUBLE) * CASE WHEN qe.answer ILIKE '%cm%' THEN 10 ELSE 1 END, 1)),
          lambda x: NOT list_contains(
            list_transform(coalesce(qe.e_measurements, []::FLOAT[]), lambda m: round(CAST(m AS DOUBLE), 1)), x)
        )) > 0
)
SELECT kind, study_id, finding_id, qa_id, generator, question, answer, detail
FROM found
ORDER BY kind, study_id, finding_id, qa_id"""


#: The documented query (``keyslice sql --out CORPUS "$(python -c ...)"``), for a corpus whose
#: findings have the v2 columns; ``keyslice check`` uses :func:`check_corpus`, which adapts.
VQA_CONTRADICTIONS = contradictions_sql()


@dataclass(frozen=True)
class CheckResult:
    counts: dict[str, int]           # contradictions per kind (every kind, zeros included)
    rows: pa.Table                   # one row per contradiction: kind, ids, question, answer, detail
    n_answers: int                   # vqa rows checked
    n_unchecked: int                 # vqa rows written before vqa v2 (no organ / answer_source)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def check_connection(con: duckdb.DuckDBPyConnection) -> CheckResult:
    """Run the check on a connection that has ``vqa`` and ``findings`` views."""
    finding_cols = {r[0] for r in con.execute("DESCRIBE findings").fetchall()}
    rows = con.sql(contradictions_sql(finding_cols)).to_arrow_table()
    counts = dict.fromkeys(KINDS, 0)
    for kind in rows.column("kind").to_pylist():
        counts[kind] += 1
    n_answers, n_unchecked = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE answer_source IS NULL) FROM vqa").fetchone()
    return CheckResult(counts, rows, int(n_answers), int(n_unchecked))


def check_corpus(corpus_dir) -> CheckResult:
    """Contradictions between the corpus's VQA answers and its findings (module docstring)."""
    from keyslice.corpus.sql import connect

    return check_connection(connect(corpus_dir))
