"""Fixtures of the chaos tests: a seed per test, printed (pytest shows it with the output of a failed test)."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """``CHAOS_SEED=N`` replays a run; otherwise a fresh seed each time, printed so a failure can be replayed."""
    value = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.nodeid}: CHAOS_SEED={value}")
    return value
