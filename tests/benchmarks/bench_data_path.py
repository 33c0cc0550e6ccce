"""Data path: kfloop ingest -> validate -> clean -> split against TFDV and the Arrow floor.

One generated table (default 1,000,000 rows: an int64 ``id`` key, 10 numeric columns with 2%
missing, 5 categorical columns of 50 values with 2% missing, a binary ``label``, and 0.1% of
the rows exact copies of others so deduplication has work) is written once as CSV. On that
same file, in the same run, each of these runs in a fresh subprocess of this script
(``--stage``), so that every peak RSS (``ru_maxrss``) is the stage's own:

- ``kfloop``: the library functions in one process: ``ingest_data`` -> ``validate_table``
  (TFDV statistics, inferred schema, anomalies) -> ``clean_data`` (deduplicate, clip two
  numeric columns, impute mean/mode) -> ``split_dataset`` (hash on ``id``, TFRecord shards,
  ``num_shards=2``); then ``split_dataset`` once more without TFRecord, for the floor ratio.
- baseline (a): ``tfdv.generate_statistics_from_csv`` (Beam DirectRunner) alone.
- baseline (b), the Arrow floor: ``pyarrow.csv.read_csv`` + Parquet (zstd) write.
- ``import``: a process that only imports the kfloop path's libraries (TF/TFDV cost hundreds
  of MB on import): the peak RSS the kfloop path's peak is measured over.
- ``kfp-local`` (informational): the same four steps as components in a kfp.local pipeline
  (``SubprocessRunner(use_venv=False)``), each task its own process.

Library imports are done before the clock starts in every stage (their time is reported
separately); kfp.local tasks pay theirs inside the task, which is part of its overhead.
Printed: stage wall times, ratios with PASS/MISS against the targets (TFDV >= 10x kfloop;
kfloop without TFRecord within 5x of the floor; kfloop peak over the import baseline under
3x the Arrow table's ``nbytes``), and the load average (other jobs may share the machine).
Nothing is asserted. Run: ``make bench`` or ``.venv/bin/python
tests/benchmarks/bench_data_path.py [--rows N] [--skip-tfdv-csv] [--skip-kfp-local]``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Only the standard library at module level: the parent process stays small, so a child's
# ru_maxrss (which on Linux can inherit the parent's high-water mark across fork/exec) is
# the child's own.

SEED = 20240601
NUMERIC = [f"num_{i}" for i in range(10)]
INT_NUMERIC = {"num_8", "num_9"}
CATEGORICAL = [f"cat_{i}" for i in range(5)]
CATEGORIES = 50
MISSING = 0.02
DUPLICATE_SHARE = 0.001
NUM_SHARDS = 2

CLEAN_CONFIG: dict[str, Any] = {
    "deduplicate": {"keep": "first"},
    "clip_outliers": {
        "num_1": {"method": "iqr", "k": 3.0},
        "num_4": {"method": "quantile", "lower_q": 0.001, "upper_q": 0.999},
    },
    "impute": {
        **{name: {"strategy": "mean"} for name in NUMERIC},
        **{name: {"strategy": "mode"} for name in CATEGORICAL},
    },
}
LIB_STAGES = ("ingest", "validate", "clean", "split")
COMPONENTS = {
    "ingest_data": "ingest",
    "validate_data": "validate",
    "clean_data": "clean",
    "split_dataset": "split",
}

TARGET_TFDV = 10.0
TARGET_FLOOR = 5.0
TARGET_MEMORY = 3.0


# -- measurements inside a stage process ------------------------------------------------------


def peak_rss_bytes() -> int:
    """``ru_maxrss`` of this process (KB on Linux) in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm_bytes() -> int:
    """The kernel's RSS high-water mark of this address space (``VmHWM``), 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


class Profiler:
    """cProfile around chosen calls when ``--profile`` is given; summaries kept as text."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.reports: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        if not self.enabled:
            return timed(fn)
        import cProfile
        import io
        import pstats

        profile = cProfile.Profile()
        start = time.perf_counter()
        value = profile.runcall(fn)
        elapsed = time.perf_counter() - start
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(18)
        stats.sort_stats("tottime").print_stats(12)
        self.reports[name] = out.getvalue()
        return value, elapsed


# -- stages (each run in its own process) -----------------------------------------------------


def stage_generate(work: Path, rows: int, **_: Any) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    start = time.perf_counter()
    rng = np.random.default_rng(SEED)
    n_dup = int(rows * DUPLICATE_SHARE)
    n = rows - n_dup
    columns: dict[str, pa.Array] = {"id": pa.array(rng.permutation(n).astype(np.int64) + 10**9)}
    latent = rng.standard_normal((3, n))
    for i, name in enumerate(NUMERIC):
        kind = i % 4
        if name in INT_NUMERIC:
            values: np.ndarray = rng.poisson(3.0 + i, n).astype(np.int64)
        elif kind == 0:
            values = np.round(50 + 12 * (0.6 * latent[i % 3] + 0.8 * rng.standard_normal(n)), 4)
        elif kind == 1:  # heavy right tail (amounts): what clipping is for
            values = np.round(np.exp(3 + 1.1 * rng.standard_normal(n)), 2)
        elif kind == 2:
            values = np.round(rng.uniform(-1, 1, n), 4)
        else:
            values = np.round(rng.gamma(2.0, 2.0, n), 4)
        columns[name] = pa.array(values, mask=rng.random(n) < MISSING)
    weights = 1.0 / np.arange(1, CATEGORIES + 1) ** 1.1
    weights /= weights.sum()
    for k, name in enumerate(CATEGORICAL):
        codes = rng.choice(CATEGORIES, size=n, p=weights).astype(np.int32)
        indices = pa.array(codes, mask=rng.random(n) < MISSING)  # null index: null value
        names = pa.array([f"c{k}_v{v:02d}" for v in range(CATEGORIES)])
        columns[name] = pa.DictionaryArray.from_arrays(indices, names).dictionary_decode()
    logit = 0.9 * latent[0] - 0.7 * latent[1] + 0.3 * rng.standard_normal(n) - 0.4
    columns["label"] = pa.array((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64))
    table = pa.table(columns)
    if n_dup:
        table = pa.concat_tables([table, table.take(pa.array(rng.integers(0, n, n_dup)))])
        table = table.take(pa.array(rng.permutation(rows)))
    csv = work / "data.csv"
    pacsv.write_csv(table, csv)
    return {
        "seconds": time.perf_counter() - start,
        "csv": str(csv),
        "csv_bytes": csv.stat().st_size,
        "rows": table.num_rows,
        "columns": table.num_columns,
        "duplicates": n_dup,
    }


def _import_kfloop_libraries() -> None:
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401
    import tensorflow  # noqa: F401
    import tensorflow_data_validation  # noqa: F401

    import kfloop.data.clean
    import kfloop.data.ingest
    import kfloop.data.split
    import kfloop.data.tfrecord
    import kfloop.data.validate  # noqa: F401


def stage_import(**_: Any) -> dict[str, Any]:
    _, seconds = timed(_import_kfloop_libraries)
    return {"import_seconds": seconds}


def stage_kfloop(work: Path, csv: str, profile: bool, **_: Any) -> dict[str, Any]:
    _, import_seconds = timed(_import_kfloop_libraries)
    after_imports = peak_rss_bytes()
    from kfloop.data.clean import clean_data
    from kfloop.data.ingest import ingest_data
    from kfloop.data.split import split_dataset
    from kfloop.data.validate import validate_table

    out = work / "kfloop"
    ingested = str(out / "ingested.parquet")
    cleaned = str(out / "cleaned.parquet")
    prof = Profiler(profile)
    seconds: dict[str, float] = {}
    peak_after: dict[str, int] = {}
    facts: dict[str, Any] = {}

    ing, seconds["ingest"] = prof.run("ingest", lambda: ingest_data(csv, ingested))
    peak_after["ingest"] = peak_rss_bytes()
    facts["ingested_rows"], facts["ingested_bytes"] = ing.rows, ing.bytes

    val, seconds["validate"] = prof.run(
        "validate", lambda: validate_table(ingested, str(out / "validation"))
    )
    peak_after["validate"] = peak_rss_bytes()
    facts["validate_engine"], facts["anomalies"] = val.engine, len(val.anomalies)

    cln, seconds["clean"] = prof.run("clean", lambda: clean_data(ingested, cleaned, CLEAN_CONFIG))
    peak_after["clean"] = peak_rss_bytes()
    facts["clean_rows_dropped"] = cln.report.rows_dropped
    facts["clipped"] = sum(c.clipped for c in cln.report.clipped)
    facts["imputed"] = sum(i.imputed for i in cln.report.imputed)

    spl, seconds["split"] = prof.run(
        "split",
        lambda: split_dataset(
            cleaned, str(out / "split"), method="hash", key_column="id", num_shards=NUM_SHARDS
        ),
    )
    peak_after["split"] = peak_rss_bytes()
    facts["split_rows"] = spl.rows
    facts["tfrecord_bytes"] = sum(
        Path(s).stat().st_size for o in spl.splits.values() for s in o.tfrecord_shards
    )
    path_peak, path_hwm = peak_rss_bytes(), vm_hwm_bytes()

    # The same split without TFRecord shards (after the measured path: its peak is above).
    _, seconds["split_no_tfrecord"] = prof.run(
        "split_no_tfrecord",
        lambda: split_dataset(
            cleaned,
            str(out / "split-parquet-only"),
            method="hash",
            key_column="id",
            write_tfrecord=False,
        ),
    )
    return {
        "import_seconds": import_seconds,
        "after_imports": after_imports,
        "seconds": seconds,
        "peak_after": peak_after,
        "path_peak": path_peak,
        "path_hwm": path_hwm,
        "facts": facts,
        "profiles": prof.reports,
    }


def stage_tfdv_csv(work: Path, csv: str, **_: Any) -> dict[str, Any]:
    def load() -> Any:
        import tensorflow_data_validation as tfdv

        return tfdv

    tfdv, import_seconds = timed(load)
    out = work / "tfdv-csv"
    out.mkdir()
    stats, seconds = timed(
        lambda: tfdv.generate_statistics_from_csv(csv, output_path=str(out / "stats.tfrecord"))
    )
    return {
        "import_seconds": import_seconds,
        "seconds": seconds,
        "num_examples": int(stats.datasets[0].num_examples),
        "num_features": len(stats.datasets[0].features),
    }


def stage_floor(work: Path, csv: str, **_: Any) -> dict[str, Any]:
    def load() -> Any:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        return pacsv, pq

    (pacsv, pq), import_seconds = timed(load)
    table, read_seconds = timed(lambda: pacsv.read_csv(csv))
    target = work / "floor.parquet"
    _, write_seconds = timed(lambda: pq.write_table(table, target, compression="zstd"))
    return {
        "import_seconds": import_seconds,
        "read_seconds": read_seconds,
        "write_seconds": write_seconds,
        "seconds": read_seconds + write_seconds,
        "table_nbytes": table.nbytes,
        "rows": table.num_rows,
        "schema": {f.name: str(f.type) for f in table.schema},
        "parquet_bytes": target.stat().st_size,
    }


def stage_kfp_local(work: Path, csv: str, **_: Any) -> dict[str, Any]:
    from kfp import dsl, local
    from kfp.local import subprocess_task_handler

    from components.clean_data.component import clean_data
    from components.ingest_data.component import ingest_data
    from components.split_dataset.component import split_dataset
    from components.validate_data.component import validate_data
    from kfloop.pipelines.local_compat import allow_omitted_optional_inputs

    allow_omitted_optional_inputs()  # kubeflow/pipelines#13061
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "pipeline-root")
    )
    task_seconds: dict[str, float] = {}
    original_run = subprocess_task_handler.SubprocessTaskHandler.run

    def timed_run(self: Any) -> Any:  # wall time of each task's process, by component
        command = list(self.full_command)
        name = command[command.index("--function_to_execute") + 1]
        status, elapsed = timed(lambda: original_run(self))
        task_seconds[name] = task_seconds.get(name, 0.0) + elapsed
        return status

    subprocess_task_handler.SubprocessTaskHandler.run = timed_run

    @dsl.pipeline(name="bench-data-path")
    def data_path(source_uri: str):  # type: ignore[no-untyped-def]
        ingest = ingest_data(source_uri=source_uri)
        validate = validate_data(dataset=ingest.outputs["dataset"])
        clean = clean_data(dataset=ingest.outputs["dataset"], config=CLEAN_CONFIG)
        clean.after(validate)
        split_dataset(
            dataset=clean.outputs["cleaned"],
            method="hash",
            key_column="id",
            num_shards=NUM_SHARDS,
            write_tfrecord=True,
        )

    _, seconds = timed(lambda: data_path(source_uri=csv))
    return {
        "seconds": seconds,
        "task_seconds": {COMPONENTS[k]: v for k, v in task_seconds.items()},
        "children_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "generate": stage_generate,
    "import": stage_import,
    "kfloop": stage_kfloop,
    "tfdv-csv": stage_tfdv_csv,
    "floor": stage_floor,
    "kfp-local": stage_kfp_local,
}


def run_stage_here(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()[0]
    result = STAGES[args.stage](
        work=Path(args.workdir), rows=args.rows, csv=args.csv, profile=args.profile
    )
    result["peak_rss"] = peak_rss_bytes()
    result["vm_hwm"] = vm_hwm_bytes()
    result["load"] = [load_start, os.getloadavg()[0]]
    Path(args.result).write_text(json.dumps(result))
    return 0


# -- orchestration (parent process) ---------------------------------------------------------


class Spawned:
    """One stage running in a fresh interpreter (this script with ``--stage``)."""

    def __init__(self, stage: str, work: Path, args: argparse.Namespace, csv: str = "") -> None:
        self.stage = stage
        self.result = work / f"result-{stage}.json"
        self.log = work / f"log-{stage}.txt"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--stage",
            stage,
            "--workdir",
            str(work),
            "--rows",
            str(args.rows),
            "--csv",
            csv,
            "--result",
            str(self.result),
        ] + (["--profile"] if args.profile else [])
        print(f"  running {stage} ...", flush=True)
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
            )

    def wait(self) -> dict[str, Any]:
        """The stage's JSON result; exits with its output's tail when it failed."""
        code = self.process.wait()
        if code != 0 or not self.result.is_file():
            tail = self.log.read_text(errors="replace").splitlines()[-40:]
            print(f"stage {self.stage} failed (exit {code}); its last lines:", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(1)
        data: dict[str, Any] = json.loads(self.result.read_text())
        return data


def spawn(stage: str, work: Path, args: argparse.Namespace, csv: str = "") -> dict[str, Any]:
    """Run one stage in a fresh interpreter, alone; its JSON result."""
    return Spawned(stage, work, args, csv).wait()


def mb(n: float) -> str:
    return f"{n / 1e6:8.1f} MB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    gen: dict[str, Any],
    imp: dict[str, Any],
    kf: dict[str, Any],
    floor: dict[str, Any],
    tfdv: dict[str, Any] | None,
    kfp: dict[str, Any] | None,
    load: tuple[float, float, float],
) -> None:
    sec = kf["seconds"]
    lib_total = sum(sec[s] for s in LIB_STAGES)
    no_tfr = lib_total - sec["split"] + sec["split_no_tfrecord"]
    nbytes = floor["table_nbytes"]
    line = "-" * 78
    print()
    print(line)
    print(
        f"data path benchmark: {gen['rows']:,} rows x {gen['columns']} columns "
        f"(id, 10 numeric + 5 categorical with {MISSING:.0%} missing, label; "
        f"{gen['duplicates']:,} duplicate rows)"
    )
    print(
        f"CSV {mb(gen['csv_bytes']).strip()}, Arrow table (pyarrow.csv.read_csv) nbytes "
        f"{mb(nbytes).strip()}; generated in {gen['seconds']:.1f}s"
    )
    print(
        f"machine: {os.cpu_count()} CPUs; load average at start {load[0]:.2f} / "
        f"{load[1]:.2f} / {load[2]:.2f} (1/5/15 min); each stage runs in a fresh process"
    )
    print(line)
    print("stage wall times (library imports excluded, reported separately)")
    print(
        f"  kfloop library path, one process   (imports {kf['import_seconds']:.1f}s, "
        f"load {kf['load'][0]:.1f} -> {kf['load'][1]:.1f})"
    )
    for s in LIB_STAGES:
        extra = f" (TFRecord, {NUM_SHARDS} shards/split)" if s == "split" else ""
        print(f"    {s:<28}{sec[s]:8.2f} s   peak RSS so far {mb(kf['peak_after'][s])}{extra}")
    print(f"    {'total':<28}{lib_total:8.2f} s")
    print(
        f"    {'split without TFRecord':<28}{sec['split_no_tfrecord']:8.2f} s"
        f"   -> total without TFRecord {no_tfr:.2f} s "
        f"(TFRecord shards cost {sec['split'] - sec['split_no_tfrecord']:.2f} s)"
    )
    print(f"  (b) Arrow floor: read_csv          {floor['read_seconds']:8.2f} s")
    print(
        f"      + write Parquet (zstd)         {floor['write_seconds']:8.2f} s"
        f"   -> {floor['seconds']:.2f} s   (load {floor['load'][0]:.1f} -> "
        f"{floor['load'][1]:.1f})"
    )
    if tfdv is not None:
        print(
            f"  (a) TFDV generate_statistics_from_csv (DirectRunner) {tfdv['seconds']:8.2f} s"
            f"   (imports {tfdv['import_seconds']:.1f}s, load {tfdv['load'][0]:.1f} -> "
            f"{tfdv['load'][1]:.1f}; {tfdv['num_examples']:,} examples)"
        )
    f = kf["facts"]
    print(
        f"  facts: ingested {f['ingested_rows']:,} rows ({mb(f['ingested_bytes']).strip()} "
        f"Parquet); validate engine {f['validate_engine']}, {f['anomalies']} anomalies; clean "
        f"dropped {f['clean_rows_dropped']:,} rows, clipped {f['clipped']:,}, imputed "
        f"{f['imputed']:,}; split {f['split_rows']}; TFRecord "
        f"{mb(f['tfrecord_bytes']).strip()}"
    )
    print(line)
    print("memory (peak RSS = ru_maxrss of the stage's process)")
    base = imp["peak_rss"]
    over = kf["path_peak"] - base
    print(f"  import-only process (numpy, pandas, pyarrow, TF, TFDV, kfloop.data): {mb(base)}")
    print(
        f"  (cross-check: the kfloop process right after the same imports:       "
        f"{mb(kf['after_imports'])})"
    )
    print(
        f"  kfloop path (ingest..split with TFRecord):                          "
        f"{mb(kf['path_peak'])}  (VmHWM {mb(kf['path_hwm']).strip()})"
    )
    print(
        f"  kfloop path over the import baseline:                                {mb(over)}"
        f"  = {over / nbytes:.2f}x the Arrow table"
    )
    if nbytes < 50e6:
        print(
            "  (a small table: fixed costs such as TensorFlow's runtime start dominate the ratio)"
        )
    print(
        f"  Arrow floor process (pyarrow only):                                  "
        f"{mb(floor['peak_rss'])}"
    )
    if tfdv is not None:
        print(
            f"  TFDV CSV process:                                                    "
            f"{mb(tfdv['peak_rss'])}  ({mb(tfdv['peak_rss'] - base).strip()} over "
            "the import baseline)"
        )
    print(line)
    rows = []
    if tfdv is not None:
        r = tfdv["seconds"] / lib_total
        rows.append(
            (
                "TFDV CSV stats / kfloop total",
                f"{r:.2f}x",
                f">= {TARGET_TFDV:g}x",
                verdict(r >= TARGET_TFDV),
            )
        )
    else:
        rows.append(("TFDV CSV stats / kfloop total", "skipped", f">= {TARGET_TFDV:g}x", "-"))
    r = no_tfr / floor["seconds"]
    rows.append(
        (
            "kfloop w/o TFRecord / Arrow floor",
            f"{r:.2f}x",
            f"<= {TARGET_FLOOR:g}x",
            verdict(r <= TARGET_FLOOR),
        )
    )
    r = over / nbytes
    rows.append(
        (
            "kfloop peak over import / table",
            f"{r:.2f}x",
            f"< {TARGET_MEMORY:g}x",
            verdict(r < TARGET_MEMORY),
        )
    )
    print("summary")
    print(f"  {'measure':<36}{'value':>10}   {'target':<9}result")
    for name, value, target, result in rows:
        print(f"  {name:<36}{value:>10}   {target:<9}{result}")
    if kfp is not None:
        print(line)
        overhead = kfp["seconds"] - lib_total
        print(
            "kfp.local (SubprocessRunner, use_venv=False), informational: "
            f"{kfp['seconds']:.2f} s for the 4 tasks, {overhead:.2f} s over the library total "
            f"({overhead / 4:.2f} s per task on average; load {kfp['load'][0]:.1f} -> "
            f"{kfp['load'][1]:.1f})"
        )
        for s in LIB_STAGES:
            t = kfp["task_seconds"].get(s)
            if t is not None:
                print(
                    f"    {s:<10} task process {t:7.2f} s   library {sec[s]:7.2f} s   "
                    f"overhead {t - sec[s]:6.2f} s"
                )
        print(f"    largest task process peak RSS {mb(kfp['children_peak']).strip()}")
    print(line)
    for name, text in kf.get("profiles", {}).items():
        print(f"cProfile of kfloop stage {name}:\n{text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="table rows (1,000,000)")
    parser.add_argument("--skip-kfp-local", action="store_true", help="skip the kfp.local run")
    parser.add_argument("--skip-tfdv-csv", action="store_true", help="skip TFDV on the CSV")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each kfloop stage (slows it)"
    )
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--csv", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage_here(args)
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")

    load = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kfloop-bench-data-") as tmp:
        work = Path(tmp)
        print(f"data path benchmark, {args.rows:,} rows, temp folder {work}")
        # The import-only process measures memory only: it may share the CPUs with the
        # (untimed-for-targets) generation; every timed stage below runs alone.
        importing = Spawned("import", work, args)
        gen = spawn("generate", work, args)
        csv = gen["csv"]
        imp = importing.wait()
        floor = spawn("floor", work, args, csv)
        kf = spawn("kfloop", work, args, csv)
        tfdv = None if args.skip_tfdv_csv else spawn("tfdv-csv", work, args, csv)
        kfp = None if args.skip_kfp_local else spawn("kfp-local", work, args, csv)
        report(gen, imp, kf, floor, tfdv, kfp, load)
    print(
        f"benchmark wall time {time.perf_counter() - start:.0f} s; "
        f"load average now {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
