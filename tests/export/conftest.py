"""Fixtures of the GGUF export tests (helpers in export_models.py)."""

import pytest
from export_models import tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()
