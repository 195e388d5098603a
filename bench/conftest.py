"""Benchmarks reuse the test suite's sandbox fixture (a real sandbox started through the CLI)."""

from tests.conftest import *  # noqa: F403
