"""Shared fixtures: paths to the real test data, a scratch data root, settings factories."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "kaggle-us-stocks"
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"


@pytest.fixture(scope="session")
def kaggle_dir() -> Path:
    """The real Kaggle-layout bars in ../shared, read in place (never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real test data not found at {SHARED_DATA} (only present in the dev workspace)"
        )
    return SHARED_DATA


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"
