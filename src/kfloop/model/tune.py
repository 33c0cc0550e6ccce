"""Hyperparameter search with keras-tuner over the declared search space.

:func:`tune_hyperparameters` searches the :class:`~kfloop.model.search_space.SearchSpace` with
keras-tuner's ``RandomSearch``, ``Hyperband`` or ``BayesianOptimization``. Every trial builds
its model with :func:`kfloop.model.train.build_model`, the function ``train_model`` uses (there
is no second model definition), and trains it as ``train_model`` does: the feature spec is
inferred from the training split, Adam with the trial's learning rate, binary cross-entropy
(with the same balanced class weights on training and validation) or MSE on a standardised
target, the trial's batch size, a seeded shuffle. A trial is scored by its best epoch's
``val_loss`` (minimised), or ``val_auc`` (maximised) for binary classification when asked.

The search is bounded by ``max_trials`` AND ``max_seconds``:

* ``max_trials``: at most this many trials are launched (for Hyperband too, whose own
  schedule could run more; a Hyperband continuation of an earlier model counts as a trial).
* ``max_seconds`` is measured from the call. It is checked at two points: (1) before a new
  trial is launched: none is launched once the budget is spent; (2) at the end of every
  epoch: a trial whose epoch ends after the deadline stops training there (Keras
  ``model.stop_training``), keeps the score of the epochs it completed and is marked
  ``cut_by_budget``. An epoch in progress is never interrupted, so the search can overrun
  ``max_seconds`` by at most one epoch (with its validation pass) plus bookkeeping. The first
  trial always completes at least one epoch, so there is always a result.

keras-tuner's working directory (checkpoints, oracle state) is a temporary folder that is
removed on return, also on error. Outputs, in ``output_dir`` (written to a temporary sibling
folder and renamed into place only when complete):

* ``best_hyperparameters.json``: the best trial's values merged over the
  :class:`~kfloop.model.train.Hyperparameters` defaults: a dict ``train_model`` accepts as
  ``hyperparameters``. ``epochs`` is not tuned; it keeps the default (``train_model`` stops
  early on the validation loss).
* ``trials.json``: the search settings and every trial (id, values, score, status, epochs,
  seconds, whether the budget cut it, error message of a failed trial).
* ``trials.md``: the same as a Markdown table, best trial first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from kfloop.core.config import parse_config
from kfloop.core.errors import ConfigError, DataError
from kfloop.model.features import (
    FeatureSpec,
    infer_feature_spec,
    label_values,
    table_to_inputs,
)
from kfloop.model.katib import bayesian_initial_points
from kfloop.model.search_space import (
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    decode_value,
    default_search_space,
    encode_value,
    parse_search_space,
)
from kfloop.model.train import MIN_TRAIN_ROWS, Hyperparameters, build_model, read_splits

__all__ = [
    "ALGORITHMS",
    "SearchSpace",
    "TrialRecord",
    "TuneResult",
    "default_search_space",
    "parse_search_space",
    "tune_hyperparameters",
]

log = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = ("random", "hyperband", "bayesian")
OBJECTIVES: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_auc": "max"}
BEST_FILE = "best_hyperparameters.json"
TRIALS_FILE = "trials.json"
TABLE_FILE = "trials.md"
HYPERBAND_FACTOR = 3
# keras-tuner's Oracle treats seed 0 as "no seed" (``seed or random.randint(...)``).
_ORACLE_SEED_OFFSET = 1
_MESSAGE_CHARS = 2000

Stop = Literal["max_trials", "max_seconds", "search_finished"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the search.

    ``values`` holds the searched hyperparameters (decoded: ``hidden_units`` as a list).
    ``score`` is the objective at the trial's best epoch (None when it failed). ``status`` is
    keras-tuner's (``COMPLETED``, ``FAILED``, ``INVALID``). ``epochs`` counts the epochs this
    trial trained (a Hyperband continuation starts at ``initial_epoch``).
    """

    trial_id: str
    values: dict[str, Any]
    score: float | None
    status: str
    seconds: float
    epochs: int
    best_epoch: int | None
    cut_by_budget: bool
    initial_epoch: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_hyperparameters` produced."""

    output_dir: str
    best_hyperparameters: dict[str, Any]
    best_trial_id: str
    best_score: float
    objective: str
    direction: str
    algorithm: str
    task: str
    trials: tuple[TrialRecord, ...]
    stopped_by: Stop
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def trial_count(self) -> int:
        """Trials launched (completed or not)."""
        return len(self.trials)

    @property
    def completed(self) -> int:
        """Trials that completed with a score."""
        return sum(1 for t in self.trials if t.status == "COMPLETED" and t.score is not None)


# -- validation ------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _resolve_objective(objective: str | None, task: str) -> str:
    name = objective or "val_loss"
    if name not in OBJECTIVES:
        raise ConfigError(
            "objective", f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}"
        )
    if name == "val_auc" and task != "binary_classification":
        raise ConfigError(
            "objective", f"val_auc needs a binary_classification task, this one is {task}"
        )
    return name


# -- the keras-tuner side --------------------------------------------------------------------


def declare(hp: kt.HyperParameters, space: SearchSpace) -> dict[str, Any]:
    """Declare ``space`` in keras-tuner's ``hp`` and return the (encoded) current values."""
    values: dict[str, Any] = {}
    for name, spec in space.params().items():
        if isinstance(spec, Choice):
            values[name] = hp.Choice(name, [encode_value(v) for v in spec.values])
        elif isinstance(spec, IntRange):
            values[name] = hp.Int(
                name,
                spec.min,
                spec.max,
                step=spec.step,
                sampling="log" if spec.log else "linear",
            )
        else:
            assert isinstance(spec, FloatRange)
            values[name] = hp.Float(
                name,
                float(spec.min),
                float(spec.max),
                step=None if spec.step is None else float(spec.step),
                sampling="log" if spec.log else "linear",
            )
    return values


def hyperparameters_from(values: Mapping[str, Any]) -> Hyperparameters:
    """:class:`Hyperparameters` from (encoded) searched values over the defaults.

    keras-tuner's own entries (``tuner/epochs``, ...) are ignored.
    """
    decoded = {k: decode_value(k, v) for k, v in values.items() if not k.startswith("tuner/")}
    for k, v in decoded.items():
        if isinstance(v, np.generic):
            decoded[k] = v.item()
    return parse_config(Hyperparameters, decoded, "hyperparameters")


@dataclass(frozen=True)
class _Data:
    spec: FeatureSpec
    x_train: dict[str, np.ndarray]
    y_train: np.ndarray
    w_train: np.ndarray
    x_val: dict[str, np.ndarray]
    y_val: np.ndarray
    w_val: np.ndarray
    label_mean: float
    label_std: float


def _dataset(
    inputs: dict[str, np.ndarray],
    y: np.ndarray,
    weights: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((inputs, y.reshape(-1, 1), weights))
    if shuffle:
        ds = ds.shuffle(min(y.size, 100_000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _KfloopHyperModel(kt.HyperModel):
    """Builds each trial's model with ``train.build_model`` and trains it like ``train_model``."""

    def __init__(self, space: SearchSpace, data: _Data, seed: int) -> None:
        super().__init__(name="kfloop")
        self.space = space
        self.data = data
        self.seed = seed

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        declare(hp, self.space)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        params = hyperparameters_from(declare(hp, self.space))
        full, _core = build_model(
            self.data.spec,
            params,
            label_mean=self.data.label_mean,
            label_std=self.data.label_std,
        )
        if self.data.spec.task == "binary_classification":
            loss: Any = keras.losses.BinaryCrossentropy(name="loss")
            metrics: list[Any] = [
                keras.metrics.AUC(name="auc"),
                keras.metrics.BinaryAccuracy(name="accuracy"),
            ]
        else:
            loss = keras.losses.MeanSquaredError(name="loss")
            metrics = [
                keras.metrics.MeanAbsoluteError(name="mae"),
                keras.metrics.RootMeanSquaredError(name="rmse"),
            ]
        full.compile(
            optimizer=keras.optimizers.Adam(params.learning_rate), loss=loss, metrics=metrics
        )
        return full

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        params = hyperparameters_from(hp.values)
        d = self.data
        train_ds = _dataset(
            d.x_train, d.y_train, d.w_train, params.batch_size, shuffle=True, seed=self.seed
        )
        val_ds = _dataset(d.x_val, d.y_val, d.w_val, params.batch_size, shuffle=False, seed=0)
        kwargs.setdefault("verbose", 0)
        return model.fit(train_ds, validation_data=val_ds, shuffle=False, **kwargs)


class _TrialClock(keras.callbacks.Callback):
    """Counts a trial's epochs and stops training at the end of an epoch past the deadline.

    keras-tuner deep-copies the callbacks it is given; this one must stay the same object so
    the tuner can read what happened, hence ``__deepcopy__`` returns ``self``.
    """

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.epochs = 0
        self.cut = False

    def __deepcopy__(self, memo: dict[int, Any]) -> _TrialClock:
        return self

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.epochs += 1
        if time.monotonic() >= self.deadline:
            self.cut = True
            self.model.stop_training = True


class _BudgetMixin:
    """Bounds a keras-tuner ``Tuner`` by a trial count and a wall-time deadline.

    The oracle stops handing out trials when ``oracle.max_trials`` trials exist; before
    each new trial :meth:`pre_create_trial` lowers that limit to the current count once the
    deadline has passed, which ends ``search()`` cleanly through keras-tuner's own path.
    """

    oracle: Any
    _deadline: float
    _max_trials: int
    budget_spent: bool
    clock_by_trial: dict[str, _TrialClock]
    seconds_by_trial: dict[str, float]

    def _init_budget(self, deadline: float, max_trials: int) -> None:
        self._deadline = deadline
        self._max_trials = max_trials
        self.budget_spent = False
        self.clock_by_trial = {}
        self.seconds_by_trial = {}
        self.oracle.max_trials = max_trials

    def pre_create_trial(self) -> None:
        started = len(self.oracle.trials)
        if started and time.monotonic() >= self._deadline:
            self.budget_spent = True
            self.oracle.max_trials = started
        super().pre_create_trial()  # type: ignore[misc]

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        clock = _TrialClock(self._deadline)
        self.clock_by_trial[trial.trial_id] = clock
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), clock]
        started = time.monotonic()
        try:
            return super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        finally:
            self.seconds_by_trial[trial.trial_id] = time.monotonic() - started


class _RandomSearch(_BudgetMixin, kt.RandomSearch):
    pass


class _Hyperband(_BudgetMixin, kt.Hyperband):
    pass


class _BayesianOptimization(_BudgetMixin, kt.BayesianOptimization):
    pass


def _make_tuner(
    algorithm: str,
    hypermodel: _KfloopHyperModel,
    objective: kt.Objective,
    *,
    max_trials: int,
    epochs_per_trial: int,
    seed: int,
    directory: str,
) -> _BudgetMixin:
    common: dict[str, Any] = {
        "hypermodel": hypermodel,
        "objective": objective,
        "seed": seed + _ORACLE_SEED_OFFSET,
        "directory": directory,
        "project_name": "search",
        "overwrite": True,
        "max_retries_per_trial": 0,
        "max_consecutive_failed_trials": 3,
    }
    tuner: _BudgetMixin
    if algorithm == "random":
        tuner = _RandomSearch(max_trials=max_trials, **common)
    elif algorithm == "bayesian":
        tuner = _BayesianOptimization(
            max_trials=max_trials,
            num_initial_points=bayesian_initial_points(max_trials),
            **common,
        )
    else:
        tuner = _Hyperband(
            max_epochs=epochs_per_trial,
            factor=HYPERBAND_FACTOR,
            hyperband_iterations=1,
            **common,
        )
    return tuner


# -- data ------------------------------------------------------------------------------------


def _load(
    train_path: str | os.PathLike[str],
    validation_path: str | os.PathLike[str],
    *,
    label: str,
    task: str | None,
    exclude: Sequence[str],
    min_train_rows: int,
    max_batch_size: int,
) -> tuple[_Data, dict[str, int]]:
    train, val, train_file, val_file = read_splits(train_path, validation_path, label)
    if train.num_rows < min_train_rows or val.num_rows < 1:
        raise DataError(
            f"too few rows for the search: training split {train_file} has {train.num_rows} "
            f"rows (need >= {min_train_rows}: twice the largest batch size {max_batch_size} "
            f"the search may use, and at least {MIN_TRAIN_ROWS}); validation split {val_file} "
            f"has {val.num_rows} rows (need >= 1). Use more data or search smaller batch "
            "sizes (search_space.batch_size)"
        )
    spec = infer_feature_spec(
        train, label, task or None, exclude, where=f"training split {train_file}"
    )
    y_train = label_values(train, label, spec.task, f"training split {train_file}")
    y_val = label_values(val, label, spec.task, f"validation split {val_file}")
    x_train = table_to_inputs(train, spec, f"training split {train_file}")
    x_val = table_to_inputs(val, spec, f"validation split {val_file}")
    label_mean, label_std = 0.0, 1.0
    if spec.task == "binary_classification":
        classes = np.unique(y_train)
        if classes.size < 2:
            raise DataError(
                f"label {label!r} has only class {int(classes[0])} in all {y_train.size} rows "
                f"of the training split {train_file}; binary classification needs both 0 and 1"
            )
        counts = np.bincount(y_train.astype(np.int64), minlength=2)
        by_class = {c: float(y_train.size / (2.0 * counts[c])) for c in (0, 1)}

        def weights(y: np.ndarray) -> np.ndarray:
            return np.where(y > 0.5, by_class[1], by_class[0]).astype(np.float32)

    else:
        label_mean = float(y_train.mean())
        label_std = float(y_train.std()) or 1.0

        def weights(y: np.ndarray) -> np.ndarray:
            return np.ones(y.size, dtype=np.float32)

    data = _Data(
        spec=spec,
        x_train=x_train,
        y_train=y_train,
        w_train=weights(y_train),
        x_val=x_val,
        y_val=y_val,
        w_val=weights(y_val),
        label_mean=label_mean,
        label_std=label_std,
    )
    return data, {"train": train.num_rows, "validation": val.num_rows}


# -- reports ---------------------------------------------------------------------------------


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def trials_markdown(result: TuneResult, space: SearchSpace) -> str:
    """The trials as a Markdown report: settings, then one row per trial, best first."""
    names = list(space.params())
    sign = 1.0 if result.direction == "min" else -1.0

    def order(t: TrialRecord) -> tuple[int, float, str]:
        if t.score is None or not math.isfinite(t.score):
            return (1, 0.0, t.trial_id)
        return (0, sign * t.score, t.trial_id)

    lines = [
        "# Hyperparameter search",
        "",
        f"- algorithm: **{result.algorithm}**, objective: **{result.objective}** "
        f"({'lower' if result.direction == 'min' else 'higher'} is better), task: {result.task}",
        f"- trials: {result.trial_count} ({result.completed} completed), stopped by "
        f"{result.stopped_by}, {result.seconds:.1f} s",
        f"- best trial: **{result.best_trial_id}**, {result.objective} = {result.best_score:.6g}",
        f"- rows: {result.rows.get('train', 0)} training, "
        f"{result.rows.get('validation', 0)} validation",
        "",
        "| trial | " + " | ".join(names) + f" | {result.objective} | status | epochs | seconds |",
        "|---|" + "---|" * len(names) + "---:|---|---:|---:|",
    ]
    for t in sorted(result.trials, key=order):
        status = t.status + (" (cut by time budget)" if t.cut_by_budget else "")
        score = "" if t.score is None else f"{t.score:.6g}"
        trial = f"**{t.trial_id}**" if t.trial_id == result.best_trial_id else t.trial_id
        cells = [_fmt_value(t.values.get(n, "")) for n in names]
        lines.append(
            f"| {trial} | "
            + " | ".join(cells)
            + f" | {score} | {status} | {t.epochs} | {t.seconds:.1f} |"
        )
    lines += ["", "Best hyperparameters (for train_model):", "", "```json"]
    lines.append(json.dumps(result.best_hyperparameters, indent=2))
    lines += ["```", ""]
    return "\n".join(lines)


def _write_outputs(
    out: Path, result: TuneResult, space: SearchSpace, settings: dict[str, Any]
) -> None:
    """Write the three files into a temporary sibling folder, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        (tmp / BEST_FILE).write_text(
            json.dumps(result.best_hyperparameters, indent=2) + "\n", encoding="utf-8"
        )
        trials = {
            **settings,
            "task": result.task,
            "rows": result.rows,
            "stopped_by": result.stopped_by,
            "seconds": round(result.seconds, 3),
            "best_trial_id": result.best_trial_id,
            "best_score": result.best_score,
            "best_hyperparameters": result.best_hyperparameters,
            "trials": [t.to_dict() for t in result.trials],
        }
        (tmp / TRIALS_FILE).write_text(json.dumps(trials, indent=2) + "\n", encoding="utf-8")
        (tmp / TABLE_FILE).write_text(trials_markdown(result, space), encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty on entry
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _records(tuner: _BudgetMixin, objective: str) -> list[TrialRecord]:
    records = []
    for trial_id in tuner.oracle.start_order:
        trial = tuner.oracle.trials[trial_id]
        clock = tuner.clock_by_trial.get(trial_id)
        values = {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in trial.hyperparameters.values.items()
            if not k.startswith("tuner/")
        }
        decoded = {k: decode_value(k, v) for k, v in values.items()}
        score = trial.score
        if score is not None and not math.isfinite(float(score)):
            score = None
        status = str(trial.status)
        best_step = trial.best_step if score is not None else None
        message = (trial.message or "").strip()
        records.append(
            TrialRecord(
                trial_id=str(trial_id),
                values=decoded,
                score=None if score is None else float(score),
                status=status,
                seconds=round(tuner.seconds_by_trial.get(trial_id, 0.0), 3),
                epochs=clock.epochs if clock else 0,
                best_epoch=None if best_step is None else int(best_step) + 1,
                cut_by_budget=bool(clock and clock.cut),
                initial_epoch=int(trial.hyperparameters.values.get("tuner/initial_epoch", 0)),
                message=message[-_MESSAGE_CHARS:],
            )
        )
    return records


# -- the operation ---------------------------------------------------------------------------


def tune_hyperparameters(
    train_path: str | os.PathLike[str],
    validation_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    label: str,
    task: str | None = None,
    search_space: SearchSpace | Mapping[str, Any] | str | None = None,
    algorithm: str = "random",
    max_trials: int = 10,
    max_seconds: int = 600,
    epochs_per_trial: int = 10,
    seed: int = 0,
    objective: str | None = None,
    exclude: Sequence[str] = (),
) -> TuneResult:
    """Search hyperparameters on the training/validation splits; write the best and the trials.

    Args:
        train_path: Training split: a split artifact folder (with ``data.parquet``) or a
            ``.parquet`` file.
        validation_path: Validation split, same forms.
        output_dir: Folder to create (must not exist or be empty) for ``best_hyperparameters
            .json``, ``trials.json`` and ``trials.md``.
        label: Label column.
        task: ``binary_classification`` or ``regression``; inferred from the label when
            None/empty.
        search_space: The search space (see :mod:`kfloop.model.search_space`); None or empty
            -> :func:`default_search_space`.
        algorithm: ``random`` (RandomSearch), ``hyperband`` (Hyperband, ``max_epochs`` =
            ``epochs_per_trial``, factor 3) or ``bayesian`` (BayesianOptimization).
        max_trials: Most trials to launch (>= 1).
        max_seconds: Wall-time budget in seconds from the call (>= 1); see the module
            docstring for exactly how it bounds the search.
        epochs_per_trial: Epochs per trial (Hyperband: the most epochs of one model).
        seed: Seed of the algorithm, the weights, dropout and shuffling.
        objective: ``val_loss`` (default, minimised) or ``val_auc`` (maximised; binary
            classification only).
        exclude: Columns that are not features (ids, keys), as for ``train_model``.

    Returns:
        :class:`TuneResult`.

    Raises:
        ConfigError: unknown ``algorithm``, ``max_trials`` < 1, bad ``max_seconds`` /
            ``epochs_per_trial`` / ``seed`` / ``objective``, a bad search space
            (``search_space.<name>``), missing label column, ``output_dir`` not empty.
        DataError: fewer training rows than twice the largest batch size of the search (or
            than ``train_model``'s minimum), an empty validation split, one class only, or
            every trial failed.
    """
    started = time.monotonic()
    if not isinstance(label, str) or not label:
        raise ConfigError("label", "must name the label column, got an empty value")
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            "algorithm", f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
        )
    _check_int("max_trials", max_trials, 1)
    _check_int("max_seconds", max_seconds, 1)
    _check_int("epochs_per_trial", epochs_per_trial, 1)
    _check_int("seed", seed, 0)
    if objective is not None and objective not in OBJECTIVES:
        raise ConfigError(
            "objective", f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}"
        )
    if isinstance(exclude, str):
        raise ConfigError("exclude", "must be a list of column names, got a string")
    space = parse_search_space(search_space)
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output_dir", f"{out} already exists and is not an empty folder")

    max_batch = space.max_value("batch_size") or Hyperparameters().batch_size
    data, rows = _load(
        train_path,
        validation_path,
        label=label,
        task=task,
        exclude=list(exclude),
        min_train_rows=max(MIN_TRAIN_ROWS, 2 * int(max_batch)),
        max_batch_size=int(max_batch),
    )
    objective_name = _resolve_objective(objective, data.spec.task)
    direction = OBJECTIVES[objective_name]

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on TF build
        log.warning("could not enable TF op determinism: %s", exc)

    deadline = started + max_seconds
    hypermodel = _KfloopHyperModel(space, data, seed)
    log.info(
        "searching %s: %s, max %d trials, %d s, %d epochs per trial, objective %s (%s)",
        data.spec.task,
        algorithm,
        max_trials,
        max_seconds,
        epochs_per_trial,
        objective_name,
        direction,
    )
    with tempfile.TemporaryDirectory(prefix="kfloop-tune-") as workdir:
        tuner = _make_tuner(
            algorithm,
            hypermodel,
            kt.Objective(objective_name, direction),
            max_trials=max_trials,
            epochs_per_trial=epochs_per_trial,
            seed=seed,
            directory=workdir,
        )
        tuner._init_budget(deadline, max_trials)
        failure: str | None = None
        try:
            tuner.search(epochs=epochs_per_trial, verbose=0)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            # keras-tuner gives up after max_consecutive_failed_trials failures.
            failure = str(exc).strip()
        records = _records(tuner, objective_name)
        spent = tuner.budget_spent

    scored = [r for r in records if r.status == "COMPLETED" and r.score is not None]
    if not scored:
        detail = failure or next((r.message for r in records if r.message), "no trial ran")
        raise DataError(
            f"hyperparameter search found no usable trial: {len(records)} trial(s) on "
            f"{rows['train']} training rows ({train_path}) all failed or scored NaN. Last "
            f"error: {detail[-_MESSAGE_CHARS:]}"
        )
    if failure is not None:
        log.warning("search stopped after consecutive failed trials: %s", failure[-300:])
    sign = 1.0 if direction == "min" else -1.0
    best = min(scored, key=lambda r: (sign * float(r.score or 0.0), r.trial_id))
    best_hp = parse_config(Hyperparameters, best.values, "hyperparameters").model_dump()
    if spent:
        stopped_by: Stop = "max_seconds"
    elif len(records) >= max_trials:
        stopped_by = "max_trials"
    else:
        stopped_by = "search_finished"
    seconds = time.monotonic() - started
    result = TuneResult(
        output_dir=str(out),
        best_hyperparameters=best_hp,
        best_trial_id=best.trial_id,
        best_score=float(best.score or 0.0),
        objective=objective_name,
        direction=direction,
        algorithm=algorithm,
        task=data.spec.task,
        trials=tuple(records),
        stopped_by=stopped_by,
        seconds=seconds,
        rows=rows,
    )
    settings = {
        "algorithm": algorithm,
        "objective": {"name": objective_name, "direction": direction},
        "max_trials": max_trials,
        "max_seconds": max_seconds,
        "epochs_per_trial": epochs_per_trial,
        "seed": seed,
        "label": label,
        "exclude": list(exclude),
        "search_space": space.to_dict(),
        "versions": {"keras_tuner": kt.__version__, "keras": keras.__version__},
    }
    _write_outputs(out, result, space, settings)
    log.info(
        "search done: %d trials (%s), best %s %s=%.6g, %.1f s; wrote %s",
        len(records),
        stopped_by,
        best.trial_id,
        objective_name,
        result.best_score,
        seconds,
        out,
    )
    return result
