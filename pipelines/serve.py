"""`fulcrum serve --background` (the end of `make run`) and `fulcrum stop`.

Starts the released Bento with `bentoml serve` on loopback in its own process group,
records its pid in ``<data>/serve.pid``, waits until it is ready and prints one real
request and its answer, so the README's main command ends with a working service.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from fulcrum.config import FulcrumConfig

PID_FILE = "serve.pid"


def _pid_path(cfg: FulcrumConfig, root: Path) -> Path:
    return Path(root) / cfg.paths.data / PID_FILE


def stop_background(cfg: FulcrumConfig, root: Path) -> str:
    path = _pid_path(cfg, root)
    if not path.exists():
        return "no background decision service is recorded"
    pid = int(json.loads(path.read_text())["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
        msg = f"stopped the decision service (pid {pid})"
    except ProcessLookupError:
        msg = f"the decision service (pid {pid}) was not running"
    path.unlink(missing_ok=True)
    return msg


def serve_in_background(cfg: FulcrumConfig, root: Path, release: dict, port: int,
                        echo: Callable[[str], None] = print) -> dict:
    """Restart the service on ``port`` in the background; returns the example answer."""
    import httpx
    import pyarrow.parquet as pq

    from pipelines.feature_store import scores_path
    from serving.examples import example_request
    from serving.process import start_server, stop_server, wait_ready

    echo(stop_background(cfg, root))
    _require_free(cfg.serve.host, port)
    log = cfg.paths.reports_dir(root) / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FULCRUM_DECISION_MODEL": release["model"]}
    if release.get("cdum_model"):  # releases before the CDUM family have none
        env["FULCRUM_CDUM_MODEL"] = release["cdum_model"]
    proc = start_server(release["bento"], port, env, log, host=cfg.serve.host, serve=cfg.serve)
    url = f"http://{cfg.serve.host}:{port}"
    try:
        wait_ready(url, proc, cfg.serve.smoke_timeout_s)
    except Exception:
        stop_server(proc)
        raise
    _pid_path(cfg, root).write_text(json.dumps({"pid": proc.pid, "url": url, "bento": release["bento"]}))
    user = int(pq.read_table(scores_path(cfg, root), columns=["user_id"]).column(0)[0].as_py())
    body = example_request(user, _responses(cfg, root), n_recent=3, n_candidates=4)
    answer = httpx.post(f"{url}/decide", json=body, timeout=10).json()
    echo(f"\nThe decision service is up on {url} (bento {release['bento']}, scores of {release['score_date']}).")
    echo(f"Example request:\n  curl -s -X POST {url}/decide -H 'content-type: application/json' -d '{json.dumps(body)}'")
    echo(f"Answer:\n  {json.dumps(answer)}")
    echo(f"Health: curl -s {url}/ops/health    Stop it: make stop (fulcrum stop)")
    return answer


def _require_free(host: str, port: int) -> None:
    """Refuse to start when something already listens there (it would answer our readiness probe)."""
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex((host, port)) == 0:
            raise RuntimeError(f"{host}:{port} is already in use: stop whatever serves there (make stop) "
                               "or choose another port (--port, serve.port)")


def _responses(cfg: FulcrumConfig, root: Path) -> list[str]:
    from fulcrum import schema as S

    return S.Manifest.read(cfg.paths.rct_dir(root)).responses
