"""The workspace lock every writer takes (.fulcrum.lock), with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fulcrum.lock import HELD_ENV, LockBusy, workspace_lock

BIN = Path(sys.executable).parent


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    """A process holding the lock for ``seconds`` (returns once it holds it)."""
    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "fulcrum.lock", "--root", str(root), "--",
                             sys.executable, "-c", f"import time; time.sleep({seconds})"], env=env)
    for _ in range(100):
        if (root / ".fulcrum.lock.holder").exists():
            return proc
        time.sleep(0.05)
    raise AssertionError("the holder never took the lock")


def test_a_second_writer_gives_up_naming_the_holder(tmp_path):
    proc = _holder(tmp_path, 5)
    try:
        with pytest.raises(LockBusy, match=rf"locked by pid {proc.pid} \(.*time.sleep\(5\)"):
            with workspace_lock(tmp_path, "test", wait_s=0.5, notify=lambda m: None):
                pass
    finally:
        proc.wait(20)
    assert not (tmp_path / ".fulcrum.lock.holder").exists()  # released: the holder note goes with it


def test_a_writer_waits_says_for_whom_then_runs(tmp_path):
    proc = _holder(tmp_path, 1.5)
    said: list[str] = []
    t0 = time.monotonic()
    with workspace_lock(tmp_path, "test", wait_s=30, notify=said.append):
        waited = time.monotonic() - t0
        assert os.environ[HELD_ENV] == str((tmp_path / ".fulcrum.lock").resolve())
    proc.wait(20)
    assert waited > 0.5 and said and f"held by pid {proc.pid}" in said[0]
    assert HELD_ENV not in os.environ


def test_children_of_the_holder_do_not_wait_for_their_parent(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    inner = [sys.executable, "-m", "fulcrum.lock", "--root", str(tmp_path), "--wait", "1", "--", "true"]
    out = subprocess.run([sys.executable, "-m", "fulcrum.lock", "--root", str(tmp_path), "--", *inner], env=env,
                         timeout=60)
    assert out.returncode == 0


def test_fulcrum_commands_take_the_lock(tmp_path):
    """params-set (and every stage, through the same CLI path) refuses while another writer holds the lock."""
    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text())
    proc = _holder(tmp_path, 6)
    env = {**{k: v for k, v in os.environ.items() if k != HELD_ENV}, "FULCRUM_LOCK_WAIT": "0.5"}
    try:
        out = subprocess.run([str(BIN / "fulcrum"), "params-set", "--params", str(params), "--set", "seed=8"],
                             capture_output=True, text=True, env=env, timeout=120)
        stage = subprocess.run([str(BIN / "fulcrum"), "collect", "--params", str(params), "--root", str(tmp_path)],
                               capture_output=True, text=True, env=env, timeout=120)
    finally:
        proc.wait(20)
    assert out.returncode == 2 and f"locked by pid {proc.pid}" in out.stdout + out.stderr
    assert "seed: 7" in params.read_text()
    assert stage.returncode == 2 and "collect did not start" in stage.stdout + stage.stderr
    assert not (tmp_path / "data").exists()
