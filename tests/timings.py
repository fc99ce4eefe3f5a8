"""Durations tests measure on the way (image build, recovery after a fault), by topic; the run's
summary prints them (tests/conftest.py). Measured, never asserted as speed: see bench/."""
from __future__ import annotations

from collections import defaultdict

TIMINGS: defaultdict[str, dict[str, float]] = defaultdict(dict)
