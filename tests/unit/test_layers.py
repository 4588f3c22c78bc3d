"""The layer order (fulcrum core <- models <- serving <- pipelines) and what the Bento ships."""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_lower_layers_never_import_higher_ones():
    out = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "1 kept, 0 broken" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def _walk(path: Path):
    """Every node of the module except what sits under ``if TYPE_CHECKING:`` (never run)."""
    todo = [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        yield node
        todo += list(ast.iter_child_nodes(node))


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a`` and ``a.b``), absolute imports only."""
    found = set()
    for node in _walk(path):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _project_imports(path: Path) -> set[str]:
    return {m for m in _imported(path) if m.split(".")[0] in ("fulcrum", "models", "pipelines", "serving")}


def test_the_bento_ships_every_module_the_service_imports_and_no_torch():
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert not any(p.split("==")[0].split("[")[0] == "torch" for p in bento["python"]["packages"])
    included = [p for p in bento["include"]]

    def shipped(rel: str) -> bool:
        return any(fnmatch(rel, pat) or fnmatch(rel, pat.replace("**/", "")) for pat in included)

    todo, seen = [ROOT / "serving" / "service.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT).as_posix()
        assert shipped(rel), f"the service imports {rel}, which the Bento does not include"
        for mod in _project_imports(path):
            base = ROOT.joinpath(*mod.split("."))
            for cand in (base.with_suffix(".py"), base / "__init__.py"):
                if cand.exists():
                    todo.append(cand)
    assert not any(p.relative_to(ROOT).parts[0] == "pipelines" for p in seen)
    for path in seen:  # nothing the service runs imports torch, even lazily
        assert "torch" not in {m.split(".")[0] for m in _imported(path)}, path
