"""Discover the components under ``components/<op>/component.py``.

Each folder holds one ``@dsl.component`` named like the folder (one name per thing).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from kfloop.core.errors import KfloopError


def repo_root() -> Path:
    """The repository root: the folder holding ``components/`` (cwd first, then the source tree)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / "components").is_dir() and (candidate / "pyproject.toml").exists():
            return candidate
    raise KfloopError(
        "cannot find the kfloop repository (a folder with components/ and pyproject.toml); "
        "run this from the repository root"
    )


def component_names(root: Path | None = None) -> list[str]:
    base = (root or repo_root()) / "components"
    return sorted(p.parent.name for p in base.glob("*/component.py"))


def load_component(name: str, root: Path | None = None) -> Any:
    """Import ``components.<name>.component`` and return the component named ``name``."""
    base = root or repo_root()
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    module = importlib.import_module(f"components.{name}.component")
    try:
        return getattr(module, name)
    except AttributeError:
        raise KfloopError(
            f"components/{name}/component.py defines no component named {name!r}"
        ) from None


def load_components(root: Path | None = None) -> dict[str, Any]:
    return {name: load_component(name, root) for name in component_names(root)}
