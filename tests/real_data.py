"""The real test data folder, for test modules that name its files at import time.

Same lookup as the ``data_dir`` fixture and the CLI (:func:`keyslice.sample.data_dir`:
``$KEYSLICE_DATA_DIR``, else ``shared/data`` beside the checkout), so that one setting moves
every test. Without the data, an importing module is skipped with the reason instead of
failing on a missing file.
"""

from __future__ import annotations

import pytest

from keyslice.sample import data_dir

try:
    DATA = data_dir()
except FileNotFoundError as exc:
    pytest.skip(f"real test data missing: {exc}", allow_module_level=True)
