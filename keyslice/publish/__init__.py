"""Publishing a corpus as a Hugging Face dataset, behind a privacy gate that fails closed.

``publish_corpus`` (the ``keyslice publish`` command) builds three ``datasets`` configurations
(``vqa``, ``findings``, ``selections``) with an ``Image`` feature for the key slices, splits them
by patient, writes Parquet shards and a dataset card, and commits only the shards that changed.
"""

from keyslice.publish.dataset_builder import PublishError
from keyslice.publish.privacy import PrivacyError, PrivacyGate, scan_text, scrub_text
from keyslice.publish.publisher import PublishResult, publish_corpus, require_deliberate_key
from keyslice.pseudonym import MissingKeyError

__all__ = ["MissingKeyError", "PrivacyError", "PrivacyGate", "PublishError", "PublishResult", "publish_corpus",
           "require_deliberate_key", "scan_text", "scrub_text"]
