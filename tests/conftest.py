import os
import tempfile

import matplotlib
import pytest
import torch
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# the recorder's compiled kernel is built on first use: into a directory of this run, not the user's cache
os.environ.setdefault("MASKED_TORCH_CACHE_DIR", tempfile.mkdtemp(prefix="masked_torch_test_cache_"))

settings.register_profile(
    "ci", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
