"""Small labelled splits and tiny trained models for the evaluation and acceptance tests.

The label depends strongly on ``x1`` and ``color`` so a model trained for a few epochs
separates the classes well; a model trained on shuffled labels does not. Splits are written
as split-artifact folders (``<name>/data.parquet``), as ``split_dataset`` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

COLORS = ["red", "green", "blue", "black", "white", "pink"]
FAST_HP = {"hidden_units": [16], "dropout": 0.0, "learning_rate": 0.02, "batch_size": 64}


def make_table(
    rows: int, seed: int, *, regression: bool = False, shuffle: bool = False
) -> pa.Table:
    """A table: id, x1 (float, some nulls), x2 (int), color (string, some nulls), flag, label."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.integers(0, 100, size=rows)
    color = rng.choice(COLORS, size=rows, p=[0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
    flag = rng.random(rows) < 0.3
    score = 2.5 * x1 + np.where(color == "red", 1.5, 0.0) - np.where(color == "blue", 1.5, 0.0)
    if regression:
        label: np.ndarray = 10.0 + 3.0 * score + rng.normal(scale=0.5, size=rows)
    else:
        p = 1.0 / (1.0 + np.exp(-score))
        label = (rng.random(rows) < p).astype(np.int64)
    if shuffle:
        label = rng.permutation(label)
    x1_null = rng.random(rows) < 0.05
    color_null = rng.random(rows) < 0.05
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "x1": pa.array(x1, mask=x1_null),
            "x2": pa.array(x2.astype(np.int64)),
            "color": pa.array(color.tolist(), type=pa.string(), mask=color_null),
            "flag": pa.array(flag),
            "label": pa.array(label),
        }
    )


def write_split(table: pa.Table, folder: Path) -> Path:
    """Write ``table`` as a split-artifact folder holding ``data.parquet``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data.parquet", compression="zstd")
    return folder


def make_splits(root: Path, *, regression: bool = False, seed: int = 0) -> dict[str, Path]:
    """Train (600 rows), validation (300) and test (300) split folders under ``root``."""
    sizes = {"train": 600, "validation": 300, "test": 300}
    return {
        name: write_split(make_table(n, seed + i, regression=regression), root / name)
        for i, (name, n) in enumerate(sizes.items())
    }


def train_tiny(
    splits: dict[str, Path], out: Path, *, shuffle_labels: bool = False, epochs: int = 8
) -> Path:
    """Train a tiny model (seconds) on ``splits``; with ``shuffle_labels`` it learns nothing."""
    from kfloop.model.train import train_model

    train = splits["train"]
    if shuffle_labels:
        table = pq.read_table(train / "data.parquet")
        rng = np.random.default_rng(99)
        labels = rng.permutation(np.asarray(table.column("label")))
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
        train = write_split(table, out.parent / f"{out.name}-shuffled-train")
    train_model(
        train,
        splits["validation"],
        out,
        label="label",
        hyperparameters=FAST_HP,
        epochs=epochs,
        exclude=["id"],
        early_stopping_patience=3,
    )
    return out


# -- one set of splits and models per test session, shared by the test files ---------------

_SHARED: dict[str, Path] = {}


def _root(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _SHARED:
        _SHARED["root"] = factory.mktemp("shared-models")
    return _SHARED["root"]


def shared_splits(factory: pytest.TempPathFactory, kind: str = "cls") -> dict[str, Path]:
    """Session-wide splits: ``cls`` (binary label) or ``reg`` (float label)."""
    key = f"splits-{kind}"
    if key not in _SHARED:
        _SHARED[key] = _root(factory) / kind
        make_splits(_SHARED[key], regression=kind == "reg", seed=0 if kind == "cls" else 10)
    return {name: _SHARED[key] / name for name in ("train", "validation", "test")}


def shared_model(factory: pytest.TempPathFactory, name: str) -> Path:
    """Session-wide tiny models: ``good`` and ``weak`` (shuffled labels) on ``cls``, ``reg``."""
    if name not in _SHARED:
        if name not in ("good", "weak", "reg"):
            raise KeyError(name)
        splits = shared_splits(factory, "reg" if name == "reg" else "cls")
        _SHARED[name] = train_tiny(
            splits, _root(factory) / f"model-{name}", shuffle_labels=name == "weak"
        )
    return _SHARED[name]


def shared_onnx(factory: pytest.TempPathFactory) -> Path:
    """The ``good`` model packaged as ONNX (model.onnx + metadata.json)."""
    if "onnx" not in _SHARED:
        from kfloop.model.package import package_onnx

        out = _root(factory) / "onnx-good"
        package_onnx(shared_model(factory, "good"), shared_splits(factory)["test"], out)
        _SHARED["onnx"] = out
    return _SHARED["onnx"]
