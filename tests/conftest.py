"""Shared fixtures: the authors' published curve archives (read from ``../shared``, never copied)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def published_dir() -> Path:
    """``<repo>/../shared/data/published``; fails under CI (env var CI set) if missing, else skips."""
    path = (REPO / ".." / "shared" / "data" / "published").resolve()
    if not path.is_dir():
        message = f"published curve archives not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def published_table(published_dir: Path) -> Callable[[str], pd.DataFrame]:
    """Loader ``stem -> long curve table`` of one published zip, imported once per session."""
    from valuescale.analysis.ingest import import_published

    cache: dict[str, pd.DataFrame] = {}

    def load(stem: str) -> pd.DataFrame:
        if stem not in cache:
            cache[stem] = import_published(published_dir / f"{stem}.zip")
        return cache[stem].copy()

    return load
