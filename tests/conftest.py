"""Shared test setup: hypothesis profiles and the location of the real checkpoints.

Profiles: `ci` (fast; selected when CI is set) and `thorough` (many examples, for
local runs: `HYPOTHESIS_PROFILE=thorough pytest`). `dev` is the default otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=30, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

REPO_ROOT = Path(__file__).resolve().parent.parent


def checkpoints_dir() -> Path:
    """The real checkpoints: $MIRRORSTREAM_MODELS, else ../shared/checkpoints beside the repo."""
    env = os.environ.get("MIRRORSTREAM_MODELS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "checkpoints"


def checkpoint_file(relative: str) -> Path:
    """Path of a real checkpoint file, or skip the test with the reason."""
    path = checkpoints_dir() / relative
    if not path.is_file():
        pytest.skip(f"real checkpoint {path} is absent (set MIRRORSTREAM_MODELS)")
    return path


@pytest.fixture
def one_thread():
    """Run a test on one numba thread (tiny models run fastest so; the bits do not depend
    on it), restoring the count after. Use: pytestmark = pytest.mark.usefixtures("one_thread")."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)
