"""Generate the README's component reference from the components' own docstrings.

``python -m kfloop.pipelines.docs`` rewrites the part of README.md between the markers
``<!-- components:start -->`` and ``<!-- components:end -->``; ``--check`` exits 1 when the
README is stale (a test runs that).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from kfloop.pipelines.registry import load_components, repo_root

START = "<!-- components:start -->"
END = "<!-- components:end -->"


def _arg_docs(doc: str) -> tuple[dict[str, str], str]:
    """Parse a Google-style docstring's ``Args:`` entries and ``Returns:`` text."""
    args: dict[str, str] = {}
    returns: list[str] = []
    section = None
    current = None
    for raw in doc.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            section, current = "args", None
            continue
        if stripped in ("Returns:", "Return:"):
            section, current = "returns", None
            continue
        if stripped.endswith(":") and not line.startswith(" " * 8) and stripped[:-1].isalpha():
            section = None
            continue
        if section == "args":
            match = re.match(r"^\s{4,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if match and len(line) - len(line.lstrip()) <= 8:
                current = match.group(1)
                args[current] = match.group(2)
            elif current and stripped:
                args[current] += " " + stripped
        elif section == "returns" and stripped:
            # NamedTuple outputs are documented as "name: description" under Returns:.
            match = re.match(r"^\s{4,8}(\w+):\s*(.*)$", line)
            if match and len(line) - len(line.lstrip()) <= 8:
                current = match.group(1)
                args[current] = match.group(2)
            elif current and current in args and not returns:
                args[current] += " " + stripped
            else:
                returns.append(stripped)
    return args, " ".join(returns)


def _type(spec_type: str) -> str:
    match = re.match(r"system\.(\w+)@", spec_type)
    return f"{match.group(1)} artifact" if match else spec_type


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def component_markdown(name: str, component: Any) -> str:
    spec = component.component_spec
    doc = inspect.getdoc(component.python_func) or ""
    args, returns = _arg_docs(doc)
    summary = (spec.description or "").split("\n")[0]
    lines = [f"### `{name}`", "", summary, ""]
    lines += ["| input | type | default | description |", "|---|---|---|---|"]
    for key, value in (spec.inputs or {}).items():
        default = "required" if not value.optional else repr(value.default)
        lines.append(
            f"| `{key}` | {_type(value.type)} | {_cell(default)} | {_cell(args.get(key, ''))} |"
        )
    lines += ["", "| output | type | description |", "|---|---|---|"]
    for key, value in (spec.outputs or {}).items():
        desc = returns if key == "Output" else args.get(key, "")
        lines.append(f"| `{key}` | {_type(value.type)} | {_cell(desc)} |")
    return "\n".join(lines) + "\n"


def render(root: Path | None = None) -> str:
    components = load_components(root)
    parts = [
        START,
        "",
        "Generated from the components' docstrings by `python -m kfloop.pipelines.docs`; a",
        "test fails when this part is stale.",
        "",
    ]
    parts += [component_markdown(name, comp) for name, comp in components.items()]
    parts.append(END)
    return "\n".join(parts)


def update_readme(readme: Path, check: bool = False) -> bool:
    """Rewrite the generated part; returns True when the file was (or would be) changed."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render(readme.parent) + tail
    if new == text:
        return False
    if not check:
        readme.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args(argv)
    readme = repo_root() / "README.md"
    changed = update_readme(readme, check=args.check)
    if args.check and changed:
        print(f"{readme} is stale: run `python -m kfloop.pipelines.docs`", file=sys.stderr)
        return 1
    print(f"{readme}: {'updated' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
