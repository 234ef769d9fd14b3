"""Test-session settings shared by the whole suite."""

from __future__ import annotations

import pytest
import torch

# These machines have 2 cores shared with other work; torch's default intra-op threads make small forward
# passes many times slower under contention. One thread keeps the suite fast and its timing steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_tuning_db(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty TVM tuning database (``NASFORGE_TUNING_DB``, inherited by the CLI and
    worker subprocesses it starts): tests tune tiny networks whose records must not land in the user's cache,
    and a test must see what CI sees, which starts with no database at all."""
    monkeypatch.setenv("NASFORGE_TUNING_DB", str(tmp_path_factory.mktemp("tuning-db")))
