"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ($SAFEFT_DATA_DIR, else ../shared/data next to the repository); tests that need it skip without it."""
    folder = Path(os.environ["SAFEFT_DATA_DIR"]) if os.environ.get("SAFEFT_DATA_DIR") else SHARED_DATA
    if not (folder / "PROVENANCE.md").is_file():
        pytest.skip(f"shared data folder {folder} is not available")
    return folder
