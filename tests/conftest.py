import os

import pytest
import torch

from humancompatible_train import _cli_train, datasets

# Two cores on CI: keep intra-op threads from oversubscribing when pytest runs in one process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any data is loaded or any model trained."""
    def refuse(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    for name in ("load_adult", "load_dutch", "load_csv"):
        monkeypatch.setattr(datasets, name, refuse)
    monkeypatch.setattr(_cli_train, "PROCEDURE", refuse)
