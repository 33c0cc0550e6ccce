"""The predictor's own payload-logging cost, in instructions per request (callgrind), same run.

The throughput benchmark (``bench_serving.py``) reads logging's cost from wrk pairs on a shared
machine, where the same server measured twice differs by as much as the target; and its CPU
per request moves with whatever else the cores do. Valgrind's callgrind counts instructions
instead: the same binary, inputs and work give the same count whatever the machine is doing
(two runs of the logging-off predictor here: 1,147.2k and 1,146.7k per batch-1 request).

Each variant is one ``kfloop serve`` under ``valgrind --tool=callgrind --instr-atstart=no``
with ``--intra-op-threads 1`` (no ONNX Runtime pool threads spinning while they wait), warmed
up with wrk, then counted over a wrk run (``-t2 -c8``, ``--seconds``) and until every event of
that run is posted; the count is divided by the requests served:

- ``off``     no payload logging;
- ``single``  one CloudEvent per post (the KServe agent's way), to a sink;
- ``arrow``   ``--logger-format arrow --logger-batch-events 512``, to a sink.

The sink is one nginx process answering 200 and keeping nothing (``bench_serving.start_sink``),
outside valgrind: a logger's work is not the predictor's. Under callgrind the predictor runs
tens of times slower, so a linger of 20 ms would gather posts of one inference where under
load they carry dozens; the benchmark first measures that slowdown (the logging-off predictor
natively against under callgrind, requests per second) and scales ``--logger-linger-seconds``
by it (at most 10 s), so that posts carry about as many inferences as under load.

What the counted window holds besides the requests (switching counting on and off, the waits
for the posts, the scrapes) is a fixed cost spread over the requests served, hence the 20 s
default: over 5 s (21-26 requests of 1,024 rows) one event per post read +5.9 %, where 20 s
(105-114 requests) read +1.2 %.

Run: ``make bench``, or ``.venv-serving/bin/python tests/benchmarks/bench_logging_instructions.py
--model-dir DIR`` (a folder written by ``tests/serving/model_factory.py``). Needs valgrind, wrk
and nginx (Debian's; installed with apt-get when missing and running as root). About 2 minutes
per variant and payload (starting a predictor under valgrind takes about a minute).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kfloop.serving.payload_events import DEFAULT_LINGER_S
from tests.benchmarks import bench_serving as bs

MAX_LINGER_S = 10.0
POST_WAIT_S = 180.0
VALGRIND_READY_S = 600.0
"""A predictor under valgrind took 45-60 s to be ready here, and over 90 s with another
benchmark beside it."""
VARIANTS: dict[str, list[str] | None] = {
    "off": None,  # no payload logging
    "single": [],
    "arrow": ["--logger-format", "arrow", "--logger-batch-events", "512"],
}
"""Each variant's logging flags (beside the sink's URL and the linger), None: logging off."""


def ensure_valgrind() -> None:
    bs.ensure_tool("valgrind")
    bs.ensure_tool("callgrind_control", "valgrind")


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def total_instructions(prefix: Path) -> int:
    """The ``totals:`` of every dump callgrind wrote under ``prefix`` (one per dump)."""
    total = 0
    for name in glob.glob(f"{prefix}*"):
        with open(name, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
    return total


def sent_events(server: bs.Server) -> float:
    return bs.metric(bs.scrape(server), "kfloop_payload_events_sent_total")


def measure(
    name: str,
    command: list[str],
    port: int,
    url: str,
    script: Path,
    seconds: int,
    workdir: Path,
    logging: bool,
) -> tuple[int, float, float]:
    """(requests served, instructions per request, share of their events posted) of one
    predictor under callgrind."""
    prefix = workdir / f"callgrind.{name}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no"]
    valgrind.append(f"--callgrind-out-file={prefix}")
    server = bs.start_server(
        name,
        [*valgrind, *command],
        port,
        "/v2/health/ready",
        workdir,
        ready_timeout=VALGRIND_READY_S,
    )
    try:
        bs.run_wrk(url, script, 10)  # warm-up: caches, first batches, the senders started
        bs.drain(server)
        time.sleep(2)
        sent0 = sent_events(server)
        callgrind(server.process.pid, "-i", "on")
        result = bs.run_wrk(url, script, seconds)
        expected = 2 * result.requests if logging else 0
        # Counted until every event of the run is posted (scraped with counting off).
        deadline = time.monotonic() + POST_WAIT_S
        while True:
            time.sleep(2)
            callgrind(server.process.pid, "-i", "off")
            posted = sent_events(server) - sent0
            if posted >= expected or time.monotonic() > deadline:
                break
            callgrind(server.process.pid, "-i", "on")
        callgrind(server.process.pid, "-d")
    finally:
        server.stop()
    instructions = total_instructions(prefix)
    share = posted / expected if expected else 1.0
    return result.requests, instructions / max(result.requests, 1), share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", default=os.environ.get("KFLOOP_SERVING_TEST_MODEL"))
    parser.add_argument("--seconds", type=int, default=20, help="counted wrk run per variant")
    args = parser.parse_args(argv)
    bs.ensure_wrk()
    bs.ensure_tool("nginx")
    ensure_valgrind()
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        workdir = Path(tmp)
        root = Path(args.model_dir) if args.model_dir else bs.build_model(workdir / "model")
        package = root / "package"
        if not (package / "model.onnx").is_file():
            raise SystemExit(f"--model-dir {root}: no package/model.onnx (run model_factory.py)")
        payloads = bs.make_payloads(root, workdir)[:2]  # batch-1 and 1,024-row JSON
        sink = bs.start_sink(workdir)
        infer = f"/v2/models/{bs.MODEL_NAME}/infer"
        print(
            f"bench_logging_instructions: callgrind, wrk -t{bs.THREADS} -c{bs.CONNECTIONS} "
            f"{args.seconds}s per variant, posts to a sink (nginx)",
            flush=True,
        )
        try:
            for payload in payloads:
                script = bs.fixed_body_script(payload, workdir / f"{payload.rows}.lua")
                # The slowdown under callgrind, to scale the linger by.
                http, grpc = bs.free_port(), bs.free_port()
                native = bs.start_server(
                    f"native-{payload.rows}",
                    bs.predictor_command(package, http, grpc),
                    http,
                    "/v2/health/ready",
                    workdir,
                )
                try:
                    bs.run_wrk(native.base + infer, script, 2)
                    native_rps = bs.run_wrk(native.base + infer, script, 5).rps
                finally:
                    native.stop()
                figures: dict[str, float] = {}
                linger = DEFAULT_LINGER_S
                for variant, flags in VARIANTS.items():
                    http, grpc = bs.free_port(), bs.free_port()
                    extra = ["--intra-op-threads", "1"]
                    if flags is not None:
                        extra += ["--logger-url", sink.base + "/", "--namespace", "bench"]
                        extra += ["--logger-linger-seconds", f"{linger:.3f}", *flags]
                    command = bs.predictor_command(package, http, grpc, extra)
                    url = f"http://127.0.0.1:{http}{infer}"
                    name = f"{variant}-{payload.rows}"
                    started = time.monotonic()
                    requests, per_request, share = measure(
                        name, command, http, url, script, args.seconds, workdir, flags is not None
                    )
                    figures[variant] = per_request
                    note = ""
                    if variant == "off":
                        slowdown = native_rps / max(requests / args.seconds, 1e-9)
                        linger = min(MAX_LINGER_S, DEFAULT_LINGER_S * slowdown)
                        note = (
                            f"; {native_rps:.0f} req/s natively: {slowdown:.0f}x slower under "
                            f"callgrind, linger for the others {linger:.2f} s"
                        )
                    else:
                        ratio = per_request / figures["off"]
                        note = f"; {ratio:.3f}x off ({100 * (ratio - 1):+.1f} %)"
                        if share < 0.99:
                            note += (
                                f"; only {100 * share:.0f} % of its events posted in time: a floor"
                            )
                    print(
                        f"  {payload.name:<22} {variant:<7} {per_request / 1e3:9.1f}k "
                        f"instructions per request over {requests} requests{note} "
                        f"({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
        finally:
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
