"""Step 4: visual question answering pairs from findings and their key slices.

Two generators write the same ``vqa`` rows (minus ``study_id``/``created_at``, which the
pipeline adds):

* :func:`generate_rule_vqa` - templates over step 1's structured finding fields (status,
  organs, laterality, measurements, abnormality types asserted and negated) and the series
  header (generator ``"rule"``, deterministic for a seed);
* :class:`LLMGenerator` - an OpenAI-compatible chat endpoint prompted with a versioned
  prompt from ``prompts/`` that carries the same fields (generator ``"llm:<model>"``),
  answers validated against ``schemas/llm/vqa_answer.v1.json``, grounded in the sentence
  and checked against the fields.

Each row records what its answer rests on (``organ``, ``abnormality``,
``evidence_finding_id``, ``answer_source``); :mod:`keyslice.vqa.consistency`
(``keyslice check``) lists the answers that contradict their finding.

The LLM classes (and the ``openai`` client they import) load on first use, so that reading
the rules or running ``keyslice sql`` / ``keyslice check`` does not import them.
"""

from keyslice.vqa.rules import RULES_VERSION, generate_rule_vqa

__all__ = ["generate_rule_vqa", "LLMConfig", "LLMGenerator", "LLMFailure", "RULES_VERSION"]


def __getattr__(name: str):
    if name in ("LLMConfig", "LLMGenerator", "LLMFailure"):
        from keyslice.vqa import llm

        return getattr(llm, name)
    raise AttributeError(name)
