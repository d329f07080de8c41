"""Step 4: visual question answering pairs from findings and their key slices.

Two generators write the same ``vqa`` rows (minus ``study_id``/``created_at``, which the
pipeline adds):

* :func:`generate_rule_vqa` - templates over step 1's structured finding fields (status,
  organs, laterality, measurements, abnormality types asserted and negated) and the series
  header (generator ``"rule"``, deterministic for a seed);
* :class:`LLMGenerator` - an OpenAI-compatible chat endpoint
  (:class:`keyslice.llm_endpoint.LLMEndpoint`) prompted with a versioned prompt from
  ``prompts/`` (:data:`LLM_PROMPT_VERSION` unless given) that carries the same fields (generator ``"llm:<model>"``),
  answers validated against ``schemas/llm/vqa_answer.v1.json``, grounded in the sentence
  and checked against the fields.

Each row records what its answer rests on (``organ``, ``abnormality``,
``evidence_finding_id``, ``answer_source``); :mod:`keyslice.vqa.consistency`
(``keyslice check``) lists the answers that contradict their finding.

The LLM classes (and the ``openai`` client they import) load on first use, so that reading
the rules or running ``keyslice sql`` / ``keyslice check`` does not import them.
"""

from keyslice.vqa.rules import RULES_VERSION, generate_rule_vqa

# the prompt of LLM VQA generation (prompts/vqa_generate.v2.md); a changed prompt text is a new file and version
LLM_PROMPT_VERSION = "vqa_generate.v2"

__all__ = ["generate_rule_vqa", "LLMGenerator", "LLMFailure", "LLM_PROMPT_VERSION", "RULES_VERSION"]


def __getattr__(name: str):
    if name in ("LLMGenerator", "LLMFailure"):
        from keyslice.vqa import llm

        return getattr(llm, name)
    raise AttributeError(name)
