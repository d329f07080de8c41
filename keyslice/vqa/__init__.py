"""Step 4: visual question answering pairs from findings and their key slices.

Two generators write the same ``vqa`` rows (minus ``study_id``/``created_at``, which the
pipeline adds):

* :func:`generate_rule_vqa` - templates over the finding fields and the series header
  (generator ``"rule"``, deterministic for a seed);
* :class:`LLMGenerator` - an OpenAI-compatible chat endpoint prompted with a versioned
  prompt from ``prompts/`` (generator ``"llm:<model>"``), answers validated against
  ``schemas/llm/vqa_answer.v1.json`` and checked for grounding in the source sentence.
"""

from keyslice.vqa.llm import LLMConfig, LLMFailure, LLMGenerator
from keyslice.vqa.rules import RULES_VERSION, generate_rule_vqa

__all__ = ["generate_rule_vqa", "LLMConfig", "LLMGenerator", "LLMFailure", "RULES_VERSION"]
