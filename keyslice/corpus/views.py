"""Derived SQL views over the corpus tables, created by :func:`keyslice.corpus.sql.connect` on every
connection (after the table views, before the connection is locked down).

The review views (definitions in :mod:`keyslice.review.metrics`' docstring and the README's
"Reviewing key slices" section):

* ``review_judgements``: each reviewer's standing judgement of a selection (their latest accept /
  reject / choose / not_visible on it that was not undone), with the finding's organ, the series'
  phase and whether it judged the selection the corpus holds now (``judged_current``);
* ``review_acceptance_by_model`` / ``_organ`` / ``_reviewer`` / ``_phase`` / ``_confidence``:
  acceptance counts grouped that way.

They are plain SQL over ``reviews``, ``findings``, ``series`` and ``selections``: the corpus layer
owns them so that reading a corpus imports nothing from the packages that fill it.
"""

from __future__ import annotations

JUDGEMENTS_SQL = "('accept', 'reject', 'choose', 'not_visible')"

VIEWS = {
    "review_judgements": f"""
SELECT j.* EXCLUDE (rn),
       j.decision = 'accept' AS accepted,
       f.organ, se.phase,
       EXISTS (SELECT 1 FROM selections s WHERE s.finding_id = j.finding_id AND s.series_id = j.series_id
               AND s.model_id = j.model_id AND s.weights_sha256 = j.weights_sha256
               AND s.top1_index = j.selection_top1_index) AS judged_current
FROM (SELECT r.*, row_number() OVER (PARTITION BY reviewer, finding_id, selection_sha256
                                     ORDER BY decided_at DESC, review_id DESC) AS rn
      FROM reviews r
      WHERE decision IN {JUDGEMENTS_SQL}
        AND review_id NOT IN (SELECT undoes FROM reviews WHERE decision = 'undo' AND undoes IS NOT NULL)) j
LEFT JOIN findings f ON f.study_id = j.study_id AND f.finding_id = j.finding_id
LEFT JOIN series se ON se.study_id = j.study_id AND se.series_id = j.series_id
WHERE j.rn = 1""",
}

_COUNTS = """count(*) AS n_judged, count(*) FILTER (WHERE accepted) AS n_accepted,
       round(n_accepted / n_judged, 4) AS acceptance,
       count(*) FILTER (WHERE decision = 'choose') AS n_chosen,
       count(*) FILTER (WHERE decision = 'reject') AS n_rejected,
       count(*) FILTER (WHERE decision = 'not_visible') AS n_not_visible"""

for _name, _by in {"review_acceptance_by_model": "model_id, weights_sha256",
                   "review_acceptance_by_organ": "organ", "review_acceptance_by_reviewer": "reviewer",
                   "review_acceptance_by_phase": "phase"}.items():
    VIEWS[_name] = (f"SELECT {_by}, {_COUNTS}, count(DISTINCT reviewer) AS n_reviewers, "
                    f"min(decided_at) AS first_decided_at FROM review_judgements GROUP BY {_by} ORDER BY {_by}")
VIEWS["review_acceptance_by_confidence"] = f"""
SELECT s.uncertain, {_COUNTS}, round(avg(s.margin), 4) AS mean_margin
FROM review_judgements j JOIN selections s ON s.finding_id = j.finding_id AND s.model_id = j.model_id
     AND s.weights_sha256 = j.weights_sha256 AND s.top1_index = j.selection_top1_index
GROUP BY s.uncertain ORDER BY s.uncertain"""


def create_views(con) -> None:
    """Create the derived views on a connection that already has the corpus' table views."""
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
