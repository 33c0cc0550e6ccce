"""Compile the pipelines under ``pipelines/`` to ``pipelines/compiled/<name>.yaml``.

``python -m kfloop.pipelines.compile [NAME ...]`` (what ``make compile`` runs) writes the YAML
(of the named pipelines only, when names are given);
``--check`` recompiles into memory and exits 1 when a checked-in file is stale, printing
a diff. The comparison ignores what changes with the kfp version alone (``sdkVersion`` and
kfp package pins), as kfp's own ``compiler/read_write_test.py`` does.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from kfloop.core.errors import KfloopError
from kfloop.pipelines.registry import repo_root

# pipeline module -> function, in pipelines/<module>.py
PIPELINES = {"training": "training_pipeline", "retraining": "retraining_pipeline"}

_VOLATILE = [
    re.compile(r"^\s*sdkVersion: .*$", re.M),
    re.compile(r"kfp==[0-9][^'\"\s]*"),
]


def normalise(text: str) -> str:
    """Strip what varies with the kfp version only."""
    for pattern in _VOLATILE:
        text = pattern.sub("<kfp-version>", text)
    return text


def load_pipeline(name: str, root: Path | None = None) -> Any:
    base = root or repo_root()
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    module = importlib.import_module(f"pipelines.{name}")
    return getattr(module, PIPELINES[name])


def available(root: Path | None = None) -> list[str]:
    base = root or repo_root()
    return [name for name in PIPELINES if (base / "pipelines" / f"{name}.py").exists()]


def compile_to_text(name: str, root: Path | None = None) -> str:
    from kfp import compiler

    pipeline = load_pipeline(name, root)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(out))
        return out.read_text(encoding="utf-8")


def compiled_path(name: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "pipelines" / "compiled" / f"{name}.yaml"


def stale(name: str, root: Path | None = None) -> str:
    """A unified diff between the checked-in YAML and a fresh compile ('' when current)."""
    path = compiled_path(name, root)
    fresh = compile_to_text(name, root)
    if not path.exists():
        return f"{path} does not exist; run `make compile`\n"
    old = normalise(path.read_text(encoding="utf-8")).splitlines(keepends=True)
    new = normalise(fresh).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, str(path), "freshly compiled"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when compiled YAML is stale")
    parser.add_argument(
        "names", nargs="*", help="pipelines to compile or check (default: every one)"
    )
    args = parser.parse_args(argv)
    names = available()
    if not names:
        raise KfloopError("no pipelines found under pipelines/")
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        raise KfloopError(f"unknown pipeline(s) {unknown}; available: {names}")
    names = [n for n in names if not args.names or n in args.names]
    failed = False
    for name in names:
        if args.check:
            diff = stale(name)
            if diff:
                failed = True
                print(diff)
            print(f"{compiled_path(name)}: {'STALE' if diff else 'current'}")
        else:
            path = compiled_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(compile_to_text(name), encoding="utf-8")
            print(f"compiled {name} -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
