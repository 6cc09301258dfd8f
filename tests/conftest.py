"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (../shared/data, next to the repository); tests that need it skip without it."""
    if not (SHARED_DATA / "PROVENANCE.md").is_file():
        pytest.skip(f"shared data folder {SHARED_DATA} is not available")
    return SHARED_DATA
