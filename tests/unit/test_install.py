"""What a release needs is installed and pinned by the project (no network at release time)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pin(name: str) -> str | None:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if re.fullmatch(rf"{re.escape(name)}==\S+", line.strip(), flags=re.IGNORECASE):
            return line.split("==", 1)[1]
    return None


def test_uv_is_a_pinned_dependency_so_bentoml_never_pip_installs_it():
    """Found by probing: BentoML's build ran `pip install uv` (unpinned) when uv was missing."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d for d in deps if d.startswith("uv==")]
    assert pinned and pinned[0] == f"uv=={_pin('uv')}"
    assert importlib.metadata.version("uv") == _pin("uv")  # the install put exactly that one in the venv
