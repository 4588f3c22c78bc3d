#!/usr/bin/env python
"""Airflow's distributed profile on loopback (`make airflow-distributed`).

Starts the API server + UI, the scheduler and the DAG processor of this project, with the
CeleryExecutor (RabbitMQ broker, PostgreSQL metadata database and result backend), and
``airflow.distributed.workers`` Celery workers as separate processes. Each worker runs in
its own working directory, a checkout of this project under ``airflow.distributed.workdir``
(a ``git clone`` plus this working tree's uncommitted changes), with its own DVC cache and no
view of the others' files: every stage task pulls its inputs from the remote (``remote``) and
pushes its outputs back (``fulcrum.remote_run``). Ctrl-C (or TERM) stops everything.

On real hosts the same profile runs one command per host: the scheduler, API server and DAG
processor on one, ``airflow celery worker --queues <queue>`` on each worker host (in a checkout
of the same commit), all with the variables ``fulcrum airflow-env --set airflow.profile=distributed``
prints, the broker, database and remote URLs pointing at the real hosts (README: "Airflow").
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cluster_env(root: Path, overrides: list[str]) -> tuple[dict[str, str], object]:
    """The controller's environment for the distributed profile, and the configuration."""
    from fulcrum.airflow_env import airflow_env
    from fulcrum.config import load_config, parse_overrides

    cfg = load_config(root / "params.yaml", parse_overrides(["airflow.profile=distributed", *overrides]))
    env = {**os.environ, **airflow_env(cfg, root), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The API server signs the tokens the workers' task runners present: every process needs the same secret.
    secret_file = home / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    env["AIRFLOW__API_AUTH__JWT_SECRET"] = secret_file.read_text().strip()
    env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = env.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    return env, cfg


def ensure_database(url: str) -> None:
    """Create the metadata database if the server lacks it (PostgreSQL)."""
    import psycopg2
    from psycopg2 import sql

    dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    base, name = dsn.rsplit("/", 1)
    name = name.split("?", 1)[0]
    con = psycopg2.connect(f"{base}/postgres", connect_timeout=5)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    con.close()


def prepare_workdir(root: Path, dest: Path) -> None:
    """A worker's own checkout: a clone of this repository plus the working tree's uncommitted changes."""
    if not (dest / ".git").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(root), str(dest)], check=True)
    else:
        subprocess.run(["git", "-C", str(dest), "fetch", "-q", str(root), "HEAD"], check=True)
        subprocess.run(["git", "-C", str(dest), "reset", "-q", "--hard", "FETCH_HEAD"], check=True)
    changed = subprocess.run(["git", "ls-files", "-z", "-m", "-o", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, changed):
        src, dst = root / rel.decode(), dest / rel.decode()
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())


def worker_env(env: dict[str, str], workdir: Path) -> dict[str, str]:
    """A worker sees only its checkout: the DAG file, the code and the DVC stages all come from there."""
    return {**env, "FULCRUM_PROJECT_DIR": str(workdir), "AIRFLOW__CORE__DAGS_FOLDER": str(workdir / "dags"),
            "PYTHONPATH": str(workdir)}


def wait_healthy(url: str, timeout_s: float = 180) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the API server at {url} did not answer within {timeout_s:.0f} s")


def start(root: Path, overrides: list[str]) -> tuple[list[subprocess.Popen], dict, object]:
    """Migrate the database and start every process; (processes, environment, configuration)."""
    env, cfg = cluster_env(root, overrides)
    dc = cfg.airflow.distributed
    if cfg.feast.profile == "embedded":
        print("WARNING: feast.profile is embedded: publish writes the SQLite online store of whichever worker "
              "runs it, where no service reads it. Set feast.profile: production (Redis) for a service to "
              "serve what the workers publish.", file=sys.stderr, flush=True)
    home = Path(env["AIRFLOW_HOME"])
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_database(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError("airflow db migrate failed:\n" + (migrate.stdout + migrate.stderr)[-3000:])
    procs = []

    def launch(name: str, args: list[str], penv: dict, cwd: Path) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (the process owns it until it exits)
        procs.append(subprocess.Popen([str(BIN / "airflow"), *args], env=penv, cwd=cwd, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    launch("api-server", ["api-server", "--host", cfg.airflow.host, "--port", str(cfg.airflow.port)], env, root)
    launch("scheduler", ["scheduler", "--skip-serve-logs"], env, root)
    launch("dag-processor", ["dag-processor"], env, root)
    for i in range(1, dc.workers + 1):
        workdir = (root / dc.workdir / f"worker{i}").resolve()
        prepare_workdir(root, workdir)
        launch(f"worker{i}", ["celery", "worker", "--queues", dc.queue, "--concurrency", str(dc.worker_concurrency),
                              "--celery-hostname", f"worker{i}@%h", "--skip-serve-logs", "--without-gossip",
                              "--without-mingle"], worker_env(env, workdir), workdir)
    return procs, env, cfg


def stop(procs: list[subprocess.Popen]) -> None:
    """TERM every process group (a Celery worker has children), then KILL what is left after 30 s."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    t0 = time.monotonic()
    for p in procs:
        try:
            p.wait(timeout=max(1.0, 30 - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the project (default: this repository)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override, e.g. airflow.port=8081 (repeatable)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    procs, env, cfg = start(root, args.overrides)
    signal.signal(signal.SIGTERM, _interrupt)  # TERM stops everything, like Ctrl-C
    try:
        wait_healthy(env["AIRFLOW__API__BASE_URL"])
        passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        login = json.loads(passwords.read_text()).get("admin", "?") if passwords.exists() else f"see {passwords}"
        print(f"\nAirflow (distributed: CeleryExecutor, {cfg.airflow.distributed.workers} workers on queue "
              f"{cfg.airflow.distributed.queue!r}) is up: {env['AIRFLOW__API__BASE_URL']}  "
              f"(logs: {env['AIRFLOW_HOME']}/logs)\nLog in as: admin / {login}\n"
              f"Remote: {env['FULCRUM_REMOTE_URL']}\nCtrl-C stops Airflow and the workers.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        dead = [p.args[1] for p in procs if p.poll() is not None]
        print(f"stopping: {dead} exited (see the logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
