import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from humancompatible_train import _cli_train, datasets

# Two cores on CI: keep intra-op threads from oversubscribing when pytest runs in one process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The suite is reproducible: hypothesis draws the same examples on every run, so CI cannot
# fail on a draw nobody can replay; HYPOTHESIS_PROFILE=explore draws fresh ones. Nothing is
# timed: a slow, loaded CI machine is no failure (no deadline, no "too slow" health check).
_untimed = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("suite", derandomize=True, **_untimed)
settings.register_profile("explore", **_untimed)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any data is loaded or any model trained."""
    def refuse(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    for name in ("load_adult", "load_dutch", "load_csv"):
        monkeypatch.setattr(datasets, name, refuse)
    monkeypatch.setattr(_cli_train, "PROCEDURE", refuse)
