"""dvc.yaml declares what each stage runs: every project module a stage imports is one of its deps.

A stage whose code changed must rerun; DVC only knows what ``deps`` lists. The closure of
project imports (module level and inside functions) is read from the source with ``ast``,
starting at the stage's module ``pipelines/<stage>.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fulcrum", "models", "pipelines", "serving")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _file_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports (``from pkg import mod`` counts ``pkg.mod`` when that is a module)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        out |= {n for n in names if n.split(".")[0] in PACKAGES and _file_of(n)}
    return out


def _closure(start: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = _file_of(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += sorted(_imports(path))
    return seen


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _deps(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_imported_project_module_is_a_dependency(stage):
    deps = _deps(STAGES[stage])
    needed = {p.relative_to(ROOT).as_posix() for p in _closure(f"pipelines.{stage}") if _has_code(p)}
    missing = sorted(p for p in needed if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} misses deps: {missing}"


def test_the_import_reader_sees_lazy_imports():
    found = {p.relative_to(ROOT).as_posix() for p in _closure("pipelines.publish")}
    assert "pipelines/drift.py" in found  # imported inside run_publish, not at module level
