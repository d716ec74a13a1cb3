import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# "ci": deterministic and bounded (same examples every run); "dev": more, random examples.
settings.register_profile("ci", derandomize=True, max_examples=30, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    import tinygrad_rnn as tg
    before = tg.get_default_dtype()
    yield
    tg.set_default_dtype(before)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
