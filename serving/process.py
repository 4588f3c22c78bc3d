"""Server processes: start ``bentoml serve`` on loopback, wait until it is ready, stop it.

Used by the deploy stage's smoke test, ``fulcrum serve`` (foreground and background), the
tests and the latency benchmark. The server runs in its own process group under the
rotating-log relay (:mod:`serving.logs`), so its log never grows without bound and one
TERM to the group stops everything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fulcrum.config import ServeConfig

CODE_DIR = Path(__file__).resolve().parents[1]  # where bentofile.yaml and the packages live
LOG_MAX_BYTES = 20 << 20  # per file; with 3 rotated files a service's log stays under 80 MiB
LOG_BACKUPS = 3


class ServerError(RuntimeError):
    """The server died or did not become ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(target: str, host: str, port: int) -> list[str]:
    return [str(Path(sys.executable).parent / "bentoml"), "serve", target, "--host", host, "--port", str(port)]


def server_env(env: dict, serve: ServeConfig | None = None) -> dict:
    """``env`` plus what serving/service.py reads at import (workers, access log, metrics, tracing).

    Without ``serve``: one worker, the rest at the configuration's defaults.
    """
    serve = serve or ServeConfig(workers=1)
    flag = {True: "1", False: "0"}
    return {**env, "FULCRUM_SERVE_WORKERS": str(serve.workers), "FULCRUM_ACCESS_LOG": flag[serve.access_log],
            "FULCRUM_METRICS": flag[serve.metrics], "FULCRUM_TRACING": flag[serve.tracing]}


def logged_command(cmd: list[str], log_file: Path, max_bytes: int = LOG_MAX_BYTES,
                   backups: int = LOG_BACKUPS) -> list[str]:
    """``cmd`` run under the rotating-log relay, writing to ``log_file``."""
    return [sys.executable, "-m", "serving.logs", "--log", str(log_file), "--max-bytes", str(max_bytes),
            "--backups", str(backups), "--", *cmd]


def start_server(target: str, port: int, env: dict, log_file: Path, host: str = "127.0.0.1",
                 serve: ServeConfig | None = None) -> subprocess.Popen:
    """``bentoml serve`` of a Bento tag or a service import path, in its own process group, logging to
    ``log_file`` (rotated)."""
    cmd = logged_command(serve_command(target, host, port), Path(log_file).resolve())
    return subprocess.Popen(cmd, env=server_env(env, serve), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=CODE_DIR, start_new_session=True)


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``url/readyz`` answers 200; ServerError if the server dies or the time runs out."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise ServerError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ServerError(f"the server was not ready after {timeout:.0f} s")
