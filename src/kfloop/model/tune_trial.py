"""One Katib trial: train once with the given hyperparameters and print the metrics.

Run by the trial Job of the Katib ``Experiment`` that :func:`kfloop.model.katib.katib_experiment`
builds::

    python -m kfloop.model.tune_trial --train-uri=s3://data/split/train \\
        --validation-uri=s3://data/split/validation --label=label --objective=val_loss \\
        --seed=0 --epochs=10 --learning-rate=0.001 --hidden-units=64,32 ...

It trains with :func:`kfloop.model.train.train_model` (the same model, preprocessing and
training loop as the pipeline's ``train_model`` component) and then prints, for every epoch,
one ``name=value`` line per metric of the Keras history (``loss=0.61``, ``val_loss=0.58``,
``val_auc=0.77``, ...), the format of Katib's ``StdOut`` metrics collector
(:data:`kfloop.model.katib.METRICS_FORMAT`). Non-finite values are not printed (Katib could
not parse them). Hyperparameters that are not given keep their defaults; ``hidden_units`` is
given as comma-separated integers (``64,32``), as Katib passes categorical values.

``--train-uri``/``--validation-uri`` take an ``s3://`` split folder (its ``data.parquet`` is
downloaded; credentials from the environment, ``S3_ENDPOINT``/``AWS_*``), an ``s3://``
``.parquet`` object, or a local path. Exit status: 0 on success, 2 on a bad argument or
input (the message says which), so Katib marks the trial failed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from kfloop.core.config import parse_config
from kfloop.core.errors import ConfigError, KfloopError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri
from kfloop.model.katib import OBJECTIVES, cli_flag
from kfloop.model.search_space import HYPERPARAMETER_KINDS, decode_value

DATA_FILE = "data.parquet"


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`ConfigError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError("tune_trial", f"{message} (see python -m kfloop.model.tune_trial -h)")


@dataclass(frozen=True)
class TrialArgs:
    """The parsed command line of a trial."""

    train_uri: str
    validation_uri: str
    label: str
    task: str | None
    objective: str
    seed: int
    epochs: int
    exclude: list[str]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


def build_parser() -> argparse.ArgumentParser:
    """The trial's argument parser: data, training settings and one option per hyperparameter."""
    parser = _Parser(
        prog="python -m kfloop.model.tune_trial",
        description="Train one Katib trial and print its metrics as name=value lines.",
    )
    parser.add_argument("--train-uri", required=True, help="training split (s3:// or path)")
    parser.add_argument("--validation-uri", required=True, help="validation split")
    parser.add_argument("--label", required=True, help="label column")
    parser.add_argument("--task", default="", help="binary_classification or regression")
    parser.add_argument("--objective", default="val_loss", choices=sorted(OBJECTIVES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True, help="epochs to train")
    parser.add_argument("--exclude", default="", help="comma-separated non-feature columns")
    parser.add_argument("--output-dir", default=None, help="keep the trained model here")
    for name, kind in HYPERPARAMETER_KINDS.items():
        what = "comma-separated integers, e.g. 64,32" if kind == "int_list" else kind
        parser.add_argument(cli_flag(name), dest=name, default=None, help=f"{name} ({what})")
    return parser


def parse_trial_args(argv: Sequence[str]) -> TrialArgs:
    """Parse and validate a trial's arguments (without the ``python -m ...`` prefix).

    Raises:
        ConfigError: an unknown or missing option, or a value that is not valid for its
            hyperparameter (``hyperparameters.<name>``).
    """
    ns = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for name in HYPERPARAMETER_KINDS:
        raw = getattr(ns, name)
        if raw is not None:
            values[name] = decode_value(name, raw)
    from kfloop.model.train import Hyperparameters  # heavy (Keras): imported on use

    hp = parse_config(Hyperparameters, values, "hyperparameters")
    if ns.epochs < 1:
        raise ConfigError("epochs", f"must be >= 1, got {ns.epochs}")
    if ns.seed < 0:
        raise ConfigError("seed", f"must be >= 0, got {ns.seed}")
    return TrialArgs(
        train_uri=ns.train_uri,
        validation_uri=ns.validation_uri,
        label=ns.label,
        task=ns.task or None,
        objective=ns.objective,
        seed=ns.seed,
        epochs=ns.epochs,
        exclude=[c.strip() for c in ns.exclude.split(",") if c.strip()],
        hyperparameters={k: getattr(hp, k) for k in values},
        output_dir=ns.output_dir,
    )


def fetch_split(uri: str, folder: Path, name: str) -> Path:
    """A local Parquet path for a split: local paths as they are; ``s3://`` downloaded.

    An ``s3://`` URI ending in ``.parquet`` is one object; any other is a split folder whose
    ``data.parquet`` is downloaded.
    """
    if not is_s3_uri(uri):
        return Path(uri)
    target = S3Uri.parse(uri, f"{name}_uri")
    if not target.key.lower().endswith((".parquet", ".pq")):
        target = target.join(DATA_FILE)
    dest = folder / name / DATA_FILE
    ObjectStore.from_env().get_file(target, dest)
    return dest


def metric_lines(history: dict[str, list[float | None]]) -> Iterator[str]:
    """``name=value`` lines, epoch by epoch, in Katib's StdOut metrics format."""
    epochs = max((len(v) for v in history.values()), default=0)
    for i in range(epochs):
        for metric in sorted(history):
            values = history[metric]
            if i < len(values):
                value = values[i]
                if value is not None and math.isfinite(value):
                    yield f"{metric}={float(value)!r}"


def run_trial(args: TrialArgs) -> dict[str, list[float | None]]:
    """Train once as specified; return the Keras history (metric -> per-epoch values)."""
    import json

    from kfloop.model.train import TRAINING_FILE, train_model

    with tempfile.TemporaryDirectory(prefix="kfloop-trial-") as tmp:
        work = Path(tmp)
        train = fetch_split(args.train_uri, work, "train")
        validation = fetch_split(args.validation_uri, work, "validation")
        out = Path(args.output_dir) if args.output_dir else work / "model"
        result = train_model(
            train,
            validation,
            out,
            label=args.label,
            task=args.task,
            hyperparameters=args.hyperparameters,
            epochs=args.epochs,
            seed=args.seed,
            exclude=args.exclude,
        )
        training = json.loads((Path(result.model_dir) / TRAINING_FILE).read_text("utf-8"))
    history: dict[str, list[float | None]] = training.get("history", {})
    if args.objective not in history:
        raise ConfigError(
            "objective",
            f"{args.objective} is not a metric of this {result.task} model; it reports "
            f"{', '.join(sorted(history))}",
        )
    return history


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, train, print the metric lines; 2 on a bad argument or input."""
    try:
        args = parse_trial_args(sys.argv[1:] if argv is None else argv)
        history = run_trial(args)
    except KfloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in metric_lines(history):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
