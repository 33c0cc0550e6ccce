"""How many CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota.

ONNX Runtime sizes its intra-op thread pool to the host's physical cores and pyarrow its CPU
pool to the host's hardware threads; neither looks at the container's CPU limit. A predictor
pod limited to 2 CPUs on a 64-core node would run 32 intra-op threads that the kernel lets
run 2 CPUs' worth of time every 100 ms, which its users report as stalls in the tail of the
latency (ONNX Runtime's issue #29510, Triton's onnxruntime_backend#245; not reproducible on a
2-core machine, where the README gives what was measured). Kubernetes turns
``resources.limits.cpu`` into the cgroup's quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) and the static CPU manager into the
affinity mask; :func:`cpu_budget` reads both.

The quota of the process's own cgroup and of each of its ancestors counts (the smallest
wins): inside a container the cgroup namespace shows the container's cgroup as the root.
A file that is missing or unreadable does not count; one that cannot be parsed is named in a
warning and does not count either.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """``affinity``: the CPUs the scheduler may run the process on; ``quota``: its cgroup's
    CPU quota in CPUs (``1.5``: 150 ms of CPU time per 100 ms), None when there is none;
    ``source``: the file the quota came from."""

    affinity: int
    quota: float | None = None
    source: str = ""

    @property
    def cpus(self) -> int:
        """Whole CPUs the process may keep busy: the quota rounded up, at most its affinity,
        at least 1."""
        if self.quota is None:
            return max(1, self.affinity)
        return max(1, min(self.affinity, math.ceil(self.quota - 1e-9)))

    def limited(self, host_cpus: int | None) -> bool:
        """Whether the process may use fewer CPUs than the host has (``host_cpus``, as
        :func:`os.cpu_count` gives it)."""
        return host_cpus is not None and self.cpus < host_cpus

    def describe(self) -> str:
        if self.quota is None:
            return f"{self.affinity} CPUs in its affinity, no CPU quota"
        return (
            f"CPU quota {self.quota:g} CPUs from {self.source}, {self.affinity} CPUs in its "
            "affinity"
        )


def _cgroup_paths(proc_cgroup: Path) -> dict[str, PurePosixPath]:
    """Each hierarchy's path for this process, by controller (``""``: the v2 hierarchy)."""
    try:
        text = proc_cgroup.read_text(encoding="utf-8")
    except OSError:
        return {}
    paths: dict[str, PurePosixPath] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = PurePosixPath(path or "/")
    return paths


def _ancestry(base: Path, path: PurePosixPath) -> Iterator[Path]:
    """``base`` joined with ``path`` and with each of its ancestors, down to ``base``
    itself (in a container the namespace's root is the container's cgroup)."""
    relative = path.relative_to("/") if path.is_absolute() else path
    for part in (relative, *relative.parents):  # "a/b": a/b, a, "." (base itself)
        yield base / part


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(directory: Path) -> float | None:
    """``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) in CPUs."""
    path = directory / "cpu.max"
    text = _read(path)
    if text is None:
        return None
    fields = text.split()
    try:
        if len(fields) != 2:
            raise ValueError(f"two fields expected, got {len(fields)}")
        if fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
        if quota <= 0 or period <= 0:
            raise ValueError("quota and period must be positive")
    except ValueError as exc:
        log.warning("%s: cannot read the CPU quota from %r (%s); not counted", path, text, exc)
        return None
    return quota / period


def _v1_quota(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in CPUs (a quota of -1: none)."""
    quota_path = directory / "cpu.cfs_quota_us"
    quota_text = _read(quota_path)
    period_text = _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        log.warning(
            "%s: cannot read the CPU quota from %r over a period of %r; not counted",
            quota_path,
            quota_text,
            period_text,
        )
        return None
    if quota <= 0 or period <= 0:  # -1: no quota
        return None
    return quota / period


def _quotas(cgroup_root: Path, proc_cgroup: Path) -> Iterator[tuple[float, Path]]:
    paths = _cgroup_paths(proc_cgroup)
    if "" in paths:  # cgroup v2 (alone, or the unified part of a hybrid set-up)
        for base in (cgroup_root, cgroup_root / "unified"):
            for directory in _ancestry(base, paths[""]):
                quota = _v2_quota(directory)
                if quota is not None:
                    yield quota, directory / "cpu.max"
    if "cpu" in paths:  # cgroup v1's cpu controller, mounted alone or with cpuacct
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for directory in _ancestry(cgroup_root / mount, paths["cpu"]):
                quota = _v1_quota(directory)
                if quota is not None:
                    yield quota, directory / "cpu.cfs_quota_us"


def cpu_budget(
    cgroup_root: Path | None = None,
    proc_cgroup: Path | None = None,
    affinity: int | None = None,
) -> CpuBudget:
    """The CPUs this process may use (see the module docs). The defaults: the cgroup file
    systems under :data:`CGROUP_ROOT`, the process's cgroups as :data:`PROC_CGROUP` lists
    them, and the size of its affinity mask."""
    cgroup_root = CGROUP_ROOT if cgroup_root is None else cgroup_root
    proc_cgroup = PROC_CGROUP if proc_cgroup is None else proc_cgroup
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity call on this platform
            affinity = os.cpu_count() or 1
    best: tuple[float, Path] | None = None
    for quota, source in _quotas(cgroup_root, proc_cgroup):
        if best is None or quota < best[0]:
            best = (quota, source)
    if best is None:
        return CpuBudget(affinity)
    return CpuBudget(affinity, best[0], str(best[1]))


def pool_threads(setting: int, budget: CpuBudget, host_cpus: int | None) -> int:
    """Threads for a library's CPU pool: ``setting`` when given (> 0), else the budget's
    CPUs when the process may use fewer CPUs than the host has, else 0 (the library's own
    default, sized to the host)."""
    if setting > 0:
        return setting
    return budget.cpus if budget.limited(host_cpus) else 0


def fit_arrow_pool(budget: CpuBudget) -> int:
    """Shrink pyarrow's CPU pool to ``budget`` when it has more threads than the process may
    keep busy (pyarrow sizes it to the host, or to ``OMP_NUM_THREADS`` /
    ``OMP_THREAD_LIMIT``, which are then left as they are). Returns the pool's size."""
    import pyarrow as pa

    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("OMP_THREAD_LIMIT"):
        return int(pa.cpu_count())
    if pa.cpu_count() > budget.cpus:
        pa.set_cpu_count(budget.cpus)
        log.info("pyarrow: %d CPU threads (%s)", budget.cpus, budget.describe())
    return int(pa.cpu_count())
