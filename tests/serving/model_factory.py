"""Build a REAL packaged model for the serving tests (runs in the PIPELINE env).

Usage: ``.venv/bin/python tests/serving/model_factory.py OUT_DIR``

Trains a tiny Keras model on kfloop's synthetic demo data (``generate_table``), packages it
with :func:`kfloop.model.package.package_onnx` and writes under ``OUT_DIR``:

- ``trained/``  the trained-model folder (``train_model``);
- ``package/``  the ONNX package (``model.onnx``, ``metadata.json``, ...), the layout KServe's
  storage initializer gives a predictor;
- ``sample.parquet``  rows of the held-out split (features only, with missing values), for
  requests;
- ``DONE``  written last: its presence means the folder is complete.

This file imports TensorFlow (through kfloop.model); the serving env has none, so the
serving tests run it as a subprocess with the pipeline env's Python.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROWS = 3000
SEED = 7
HYPERPARAMETERS = {
    "hidden_units": [16],
    "dropout": 0.0,
    "learning_rate": 0.01,
    "batch_size": 128,
    "embedding_dim": 4,
}


def build(out: Path) -> None:
    import pyarrow.parquet as pq

    from kfloop.data.synth import generate_table
    from kfloop.model.package import package_onnx
    from kfloop.model.train import train_model

    out.mkdir(parents=True, exist_ok=True)
    table = generate_table(rows=ROWS, seed=SEED)
    n = table.num_rows
    train, validation, test = (
        table.slice(0, int(n * 0.7)),
        table.slice(int(n * 0.7), int(n * 0.15)),
        table.slice(int(n * 0.85)),
    )
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        (out / "splits" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, out / "splits" / name / "data.parquet")
    trained = train_model(
        out / "splits" / "train",
        out / "splits" / "validation",
        out / "trained",
        label="label",
        hyperparameters=HYPERPARAMETERS,
        epochs=3,
        exclude=["id"],
    )
    package_onnx(
        trained.model_dir,
        out / "splits" / "test",
        out / "package",
        metrics={"auc": 0.0},
        model_name="churn",
        version="v1",
    )
    pq.write_table(test, out / "sample.parquet")
    (out / "DONE").write_text("ok\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: model_factory.py OUT_DIR", file=sys.stderr)
        return 2
    build(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
