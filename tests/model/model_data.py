"""Synthetic tables and tiny trained models for the features/train/package tests.

The binary label follows a logistic rule on ``x1``, ``x2`` and ``color`` so a few epochs
learn it; ``x1`` and ``color`` have missing values; ``city`` is a higher-cardinality string;
``flag`` is a bool; ``event_time`` is a timestamp (not a feature); ``id`` is a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLORS = ["red", "green", "blue", "yellow"]
CITIES = [f"city_{i:02d}" for i in range(25)]
FAST_HP: dict[str, Any] = {
    "hidden_units": [16],
    "dropout": 0.0,
    "learning_rate": 0.01,
    "batch_size": 128,
    "embedding_dim": 4,
}


def make_table(rows: int, seed: int = 0, *, regression: bool = False) -> pa.Table:
    """A demo-shaped table with numeric (NaN), categorical (None), bool, timestamp columns."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.integers(0, 50, size=rows)
    color = rng.choice(COLORS, size=rows, p=[0.4, 0.3, 0.2, 0.1])
    city = rng.choice(CITIES, size=rows)
    flag = rng.random(rows) < 0.3
    score = 2.0 * x1 - 0.04 * (x2 - 25) + np.where(color == "red", 1.5, 0.0)
    score -= np.where(color == "blue", 1.5, 0.0)
    if regression:
        label: Any = pa.array(20.0 + 5.0 * score + rng.normal(scale=0.5, size=rows))
    else:
        p = 1.0 / (1.0 + np.exp(-score))
        label = pa.array((rng.random(rows) < p).astype(np.int64))
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "x1": pa.array(x1, mask=rng.random(rows) < 0.1),
            "x2": pa.array(x2.astype(np.int64)),
            "color": pa.array(color.tolist(), type=pa.string(), mask=rng.random(rows) < 0.05),
            "city": pa.array(city.tolist(), type=pa.string()),
            "flag": pa.array(flag),
            "event_time": pa.array(
                np.datetime64("2025-01-01T00:00:00", "us")
                + rng.integers(0, 10**12, rows).astype("timedelta64[us]")
            ),
            "label": label,
        }
    )


def write_split(table: pa.Table, folder: Path) -> Path:
    """Write ``table`` as a split-artifact folder (``<folder>/data.parquet``)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data.parquet", compression="zstd")
    return folder


def make_splits(
    root: Path, *, regression: bool = False, sizes: tuple[int, int, int] = (800, 300, 200)
) -> dict[str, Path]:
    """Train/validation/test split folders under ``root``."""
    return {
        name: write_split(make_table(n, seed, regression=regression), root / name)
        for (name, n, seed) in zip(("train", "validation", "test"), sizes, (0, 1, 2), strict=True)
    }


def leftovers(parent: Path) -> list[str]:
    """Temporary ``.part`` folders/files left in ``parent`` (there should be none)."""
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".part"))
