"""The CPU budget (affinity and cgroup quota) and the thread pools sized from it.

Cgroup trees are real files laid out as the kernel shows them (cgroup v2, v1, a container's
namespace); one test puts a real process in a real cgroup with a CPU quota, where the kernel
lets this machine make one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from kfloop.serving.cpus import CpuBudget, cpu_budget, fit_arrow_pool, pool_threads
from tests.serving.conftest import REPO, SERVING_PYTHON, BuiltModel


def tree(root: Path, files: dict[str, str], cgroups: str) -> tuple[Path, Path]:
    """A cgroup file system under ``root`` holding ``files`` (path -> text), and a
    ``/proc/self/cgroup`` listing ``cgroups``."""
    for name, text in files.items():
        path = root / "sys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (root / "sys").mkdir(parents=True, exist_ok=True)
    proc = root / "proc_cgroup"
    proc.write_text(cgroups)
    return root / "sys", proc


def test_v2_quota_of_the_own_cgroup(tmp_path: Path) -> None:
    sys_root, proc = tree(
        tmp_path,
        {"kubepods/pod1/c1/cpu.max": "150000 100000", "kubepods/pod1/cpu.max": "max 100000"},
        "0::/kubepods/pod1/c1\n",
    )
    budget = cpu_budget(sys_root, proc, affinity=8)
    assert budget.quota == pytest.approx(1.5)
    assert budget.cpus == 2  # 1.5 CPUs keep 2 threads busy part of the time
    assert budget.source == str(sys_root / "kubepods/pod1/c1/cpu.max")
    assert "1.5 CPUs" in budget.describe() and budget.source in budget.describe()


def test_the_smallest_quota_up_the_tree_wins(tmp_path: Path) -> None:
    sys_root, proc = tree(
        tmp_path,
        {"kubepods/pod1/c1/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "100000 50000"},
        "0::/kubepods/pod1/c1\n",
    )
    budget = cpu_budget(sys_root, proc, affinity=64)
    assert (budget.quota, budget.cpus) == (2.0, 2)
    assert budget.source.endswith("kubepods/pod1/cpu.max")


def test_a_container_namespace_shows_its_cgroup_as_the_root(tmp_path: Path) -> None:
    sys_root, proc = tree(tmp_path, {"cpu.max": "50000 100000"}, "0::/\n")
    budget = cpu_budget(sys_root, proc, affinity=16)
    assert (budget.quota, budget.cpus) == (0.5, 1)


def test_v1_quota_with_cpu_and_cpuacct_mounted_together(tmp_path: Path) -> None:
    sys_root, proc = tree(
        tmp_path,
        {
            "cpu,cpuacct/kubepods/x/cpu.cfs_quota_us": "250000",
            "cpu,cpuacct/kubepods/x/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/kubepods/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/kubepods/cpu.cfs_period_us": "100000",
        },
        "5:memory:/kubepods/x\n4:cpu,cpuacct:/kubepods/x\n0::/\n",
    )
    budget = cpu_budget(sys_root, proc, affinity=32)
    assert (budget.quota, budget.cpus) == (2.5, 3)


@pytest.mark.parametrize(
    ("files", "cgroups"),
    [
        ({"cpu.max": "max 100000"}, "0::/\n"),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n"),
        ({}, "0::/\n"),
        ({}, ""),
    ],
    ids=["v2-max", "v1-minus-one", "no-file", "no-cgroup"],
)
def test_no_quota_leaves_the_affinity(tmp_path: Path, files: dict[str, str], cgroups: str) -> None:
    sys_root, proc = tree(tmp_path, files, cgroups)
    budget = cpu_budget(sys_root, proc, affinity=6)
    assert budget == CpuBudget(6)
    assert budget.cpus == 6 and "no CPU quota" in budget.describe()


def test_the_affinity_caps_a_larger_quota(tmp_path: Path) -> None:
    sys_root, proc = tree(tmp_path, {"cpu.max": "800000 100000"}, "0::/\n")
    assert cpu_budget(sys_root, proc, affinity=2).cpus == 2


def test_a_missing_proc_file_leaves_the_affinity(tmp_path: Path) -> None:
    assert cpu_budget(tmp_path, tmp_path / "absent", affinity=3) == CpuBudget(3)


@pytest.mark.parametrize("text", ["lots 100000", "100000", "0 100000", "-5 100000"])
def test_an_unreadable_quota_is_named_and_not_counted(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    sys_root, proc = tree(tmp_path, {"cpu.max": text}, "0::/\n")
    with caplog.at_level(logging.WARNING, logger="kfloop.serving.cpus"):
        budget = cpu_budget(sys_root, proc, affinity=4)
    assert budget == CpuBudget(4)
    assert str(sys_root / "cpu.max") in caplog.text and repr(text) in caplog.text


def test_pool_threads() -> None:
    limited = CpuBudget(affinity=64, quota=2.0, source="cpu.max")
    assert pool_threads(3, limited, 64) == 3  # an explicit setting wins
    assert pool_threads(0, limited, 64) == 2
    assert pool_threads(0, CpuBudget(affinity=64), 64) == 0  # the library's own default
    assert pool_threads(0, CpuBudget(affinity=2), 64) == 2  # a cpuset of 2 on a big node


@pytest.fixture
def arrow_pool() -> Iterator[int]:
    before = pa.cpu_count()
    yield before
    pa.set_cpu_count(before)


def test_pyarrow_pool_shrinks_to_the_budget(
    arrow_pool: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    pa.set_cpu_count(8)
    assert fit_arrow_pool(CpuBudget(affinity=8, quota=1.0, source="cpu.max")) == 1
    assert pa.cpu_count() == 1
    pa.set_cpu_count(2)
    assert fit_arrow_pool(CpuBudget(affinity=8)) == 2  # never grown


def test_pyarrow_pool_left_to_omp_num_threads(
    arrow_pool: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    pa.set_cpu_count(3)
    assert fit_arrow_pool(CpuBudget(affinity=8, quota=1.0, source="cpu.max")) == 3


# -- the predictor's ONNX Runtime session ------------------------------------------------------

SESSION_THREADS = """
import json, os, sys
from pathlib import Path
from kfloop.serving import cpus
from kfloop.serving.predictor import OnnxPredictor
if len(sys.argv) > 2:
    cpus.CGROUP_ROOT, cpus.PROC_CGROUP = Path(sys.argv[2]), Path(sys.argv[3])
model = OnnxPredictor("m", sys.argv[1])
model.load()
threads = int(Path("/proc/self/status").read_text().split("Threads:")[1].split()[0])
print(json.dumps({"intra": model.session.get_session_options().intra_op_num_threads,
                  "threads": threads}))
"""


def session_threads(package: Path, *fake: Path, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [str(SERVING_PYTHON), "-c", SESSION_THREADS, str(package), *map(str, fake)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_predictor_session_sized_to_the_pod_quota(built_model: BuiltModel, tmp_path: Path) -> None:
    host = os.cpu_count() or 1
    if host < 2:
        pytest.skip("one CPU: no quota can give the predictor fewer")
    sys_root, proc = tree(tmp_path, {"cpu.max": "100000 100000"}, "0::/\n")
    limited = session_threads(built_model.package, sys_root, proc)
    unlimited_root, unlimited_proc = tree(tmp_path / "none", {"cpu.max": "max 100000"}, "0::/\n")
    default = session_threads(built_model.package, unlimited_root, unlimited_proc)
    assert limited["intra"] == 1
    assert default["intra"] == 0  # ONNX Runtime's own default: the host's cores
    # ONNX Runtime started fewer threads (its intra-op pool has one thread less per CPU).
    assert limited["threads"] < default["threads"]
    # ORT_INTRA_OP_NUM_THREADS, which ONNX Runtime reads itself, is left to it, quota or
    # not: its pool of 2 threads has one more than the pool of 1.
    env_set = session_threads(
        built_model.package, sys_root, proc, env={"ORT_INTRA_OP_NUM_THREADS": "2"}
    )
    assert env_set["intra"] == 0 and env_set["threads"] == limited["threads"] + 1


# -- a real cgroup ---------------------------------------------------------------------------------


def _make_cgroup(quota_us: int, period_us: int) -> Path | None:
    """A new cgroup with a CPU quota (cgroup v1's cpu controller or v2), or None when this
    machine does not let the tests make one."""
    name = f"kfloop-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").is_file():
            group = v1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
            return group
        if "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")
            return group
    except OSError:
        return None
    return None


@pytest.fixture
def quota_cgroup() -> Iterator[Path]:
    group = _make_cgroup(50_000, 100_000)
    if group is None:
        pytest.skip("this machine does not let the tests make a cgroup with a CPU quota")
    yield group
    group.rmdir()


def test_a_real_cgroup_quota(quota_cgroup: Path) -> None:
    code = (
        "import json, os, sys; "
        f"open({str(quota_cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
        "from kfloop.serving.cpus import cpu_budget; "
        "from kfloop.serving.cpus import fit_arrow_pool; "
        "from kfloop.serving.predictor import intra_op_threads; "
        "b = cpu_budget(); "
        "print(json.dumps([b.quota, b.cpus, b.source, intra_op_threads(0), fit_arrow_pool(b)]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    result = subprocess.run(
        [str(SERVING_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=True,
    )
    quota, cpus, source, threads, arrow = json.loads(result.stdout.strip().splitlines()[-1])
    assert (quota, cpus) == (0.5, 1)
    assert source.startswith(str(quota_cgroup))
    assert threads == (1 if (os.cpu_count() or 1) > 1 else 0)
    assert arrow == 1  # pyarrow's pool, sized to the host (or OMP_NUM_THREADS) before
