"""Airflow's distributed profile for real: CeleryExecutor on RabbitMQ, two Celery workers with their
own working directories, PostgreSQL metadata and result backend, a local-directory DVC remote.

One tiny project runs the whole ``fulcrum_daily`` DAG on the two loopback workers
(``scripts/airflow_distributed.py``, what `make airflow-distributed` starts). Then:
- its cached outputs (the run's ``dvc.lock``, assembled in the remote) are the ones a single-machine
  ``dvc repro`` of the same project gives;
- a fresh checkout with an empty work tree runs a stage from the remote alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from fulcrum.remote_run import pipeline, producers, safe_run_id
from tests.orchestration.test_dag import SETTINGS, _make_project

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS_DB = 12  # the data tests use 13
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
          "GIT_COMMITTER_EMAIL": "t@localhost"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _services_or_skip() -> None:
    for port, what in ((5672, "RabbitMQ"), (5432, "PostgreSQL"), (6379, "Redis")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError as e:
            if os.environ.get("CI"):
                pytest.fail(f"{what} on 127.0.0.1:{port} is required in CI: {e}")
            pytest.skip(f"no {what} on 127.0.0.1:{port}")


def _settings(pg_url: str, tag: str) -> dict:
    return {
        **SETTINGS,
        "feast": {"project": f"fulcrum_{tag}", "profile": "production",
                  "production": {"redis_connection_string": "127.0.0.1:6379", "redis_db": REDIS_DB}},
        "airflow": {"home": "airflow_home", "port": _free_port(), "parallelism": 4, "distributed": {
            "sql_alchemy_conn": pg_url, "result_backend": "db+" + pg_url,
            "queue": f"fulcrum_{tag}", "workers": 2, "worker_concurrency": 1, "workdir": "workers"}},
        "remote": {"type": "local", "path": "remote"},
    }


def _commit(root: Path) -> None:
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "remote/\nworkers/\n")
    env = {**os.environ, **GIT_ID}
    for cmd in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "tiny project"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=env)


def _api(base: str, token: str | None, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _wait_for(fn, timeout_s: float, every_s: float = 2.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            got = fn()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(every_s)
    raise TimeoutError(f"nothing after {timeout_s:.0f} s")


def _cached_outs(lock: dict, project: Path, stages: list[str]) -> dict[str, str]:
    """{output path: md5} of the outputs DVC caches (not the reports, which hold timings), for ``stages``."""
    io = pipeline(project)
    return {o["path"]: o["md5"] for name in stages for o in lock["stages"][name].get("outs", [])
            if o["path"] in io[name].cached}


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """The tiny project after one DAG run on two Celery workers: (project, run id, task instances)."""
    _services_or_skip()
    import psycopg2
    import redis

    from tests.conftest import PG_DSN

    tag = uuid.uuid4().hex[:8]
    db = f"fulcrum_celery_{tag}"
    pg_url = f"{PG_DSN.rsplit('/', 1)[0]}/{db}".replace("postgresql://", "postgresql+psycopg2://", 1)
    project = _make_project(tmp_path_factory.mktemp("distributed"), _settings(pg_url, tag))
    _commit(project)
    log = open(project / "cluster.log", "wb")  # noqa: SIM115
    cluster = subprocess.Popen([sys.executable, str(REPO / "scripts" / "airflow_distributed.py"), "--root",
                                str(project)], cwd=project, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    cfg = yaml.safe_load((project / "params.yaml").read_text())["airflow"]
    base = f"http://127.0.0.1:{cfg['port']}"
    try:
        _wait_for(lambda: cluster.poll() is None and _api(base, None, "GET", "/api/v2/monitor/health"), 240)
        password = json.loads((project / "airflow_home" / "simple_auth_manager_passwords.json.generated")
                              .read_text())["admin"]
        token = _api(base, None, "POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
        _wait_for(lambda: _api(base, token, "GET", "/api/v2/dags/fulcrum_daily"), 180)
        # Unpausing starts the latest scheduled run (catchup is off): that run is the one checked.
        _api(base, token, "PATCH", "/api/v2/dags/fulcrum_daily", {"is_paused": False})
        runs = _wait_for(lambda: _api(base, token, "GET", "/api/v2/dags/fulcrum_daily/dagRuns")["dag_runs"], 120)
        run_id = runs[0]["dag_run_id"]
        path = f"/api/v2/dags/fulcrum_daily/dagRuns/{run_id}"
        state = _wait_for(lambda: (s := _api(base, token, "GET", path)["state"]) in ("success", "failed") and s,
                          1200, every_s=5)
        tis = _api(base, token, "GET", f"{path}/taskInstances?limit=100")["task_instances"]
        yield project, run_id, state, tis
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        client.flushdb()
        client.close()
        con = psycopg2.connect(PG_DSN)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        con.close()


def _tail(project: Path) -> str:
    logs = [project / "cluster.log", *sorted((project / "airflow_home" / "logs").glob("*.log"))]
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())


@pytest.mark.slow
@pytest.mark.integration
def test_the_daily_dag_runs_on_two_celery_workers_like_one_machine(distributed_run, tmp_path):
    project, run_id, state, tis = distributed_run
    states = {t["task_id"]: t["state"] for t in tis}
    assert state == "success", (states, _tail(project))
    stage_tis = [t for t in tis if t["task_id"] not in ("restore_workspace", "fail_run_if_a_stage_failed")]
    assert {t["state"] for t in stage_tis} == {"success"}, states
    remote = project / "remote"
    run_dir = remote / "runs" / safe_run_id(run_id)
    ran = {json.loads(p.read_text())["workdir"] for p in (run_dir / "ran").glob("*.json")}
    assert ran == {str(project / "workers" / "worker1"), str(project / "workers" / "worker2")}  # both took stages
    lock = json.loads((remote / "current" / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(pipeline(project))  # every stage, score_part@i included
    # Nothing ran in the controller's own checkout: the stages' outputs live in the workers' and the remote.
    assert not (project / "data").exists()

    # The same project on one machine: `dvc repro score` gives the same cached outputs.
    single = _make_project(tmp_path / "single", SETTINGS)
    (single / "params.yaml").write_text((project / "params.yaml").read_text())
    res = subprocess.run([str(BIN / "dvc"), "repro", "score"], cwd=single, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data_stages = ["collect", "training_set", "train", "train_cpm", "score_part@0", "score"]  # what `dvc repro score` runs
    single_lock = yaml.safe_load((single / "dvc.lock").read_text())
    ours, theirs = _cached_outs(lock, project, data_stages), _cached_outs(single_lock, project, data_stages)
    assert len(ours) == len(data_stages) and ours.keys() == theirs.keys()
    for path, md5 in ours.items():
        if md5 != theirs[path]:
            _same_directory(remote / "cache", md5, single / ".dvc" / "cache", theirs[path], path)


# Cross-fit fold models' out-of-fold predictions (outcomes of 50–130 here) are compared to this
# absolute tolerance, not bit for bit: one run in six differed by ≤ 2e-4, a few float32 ulps (not
# reproduced alone, under load or with other thread counts). The daily model itself, and everything
# scored with it, must be bit-identical.
CROSSFIT_TOLERANCE = 1e-3


def _same_directory(cache_a: Path, md5_a: str, cache_b: Path, md5_b: str, path: str) -> None:
    """Two DVC directory outputs hold the same files, bit for bit, but for cross-fit predictions (to tolerance)."""
    import numpy as np

    from pipelines.crossfit import CROSSFIT_FILE

    def cached(cache: Path, md5: str) -> Path:
        return cache / "files" / "md5" / md5[:2] / md5[2:]

    def entries(cache: Path, md5: str) -> dict[str, str]:  # {relpath: md5} of a directory output
        assert md5.endswith(".dir"), f"{path}: {md5} is not a directory output"
        return {e["relpath"]: e["md5"] for e in json.loads(cached(cache, md5).read_text())}

    a, b = entries(cache_a, md5_a), entries(cache_b, md5_b)
    assert a.keys() == b.keys(), (path, sorted(a), sorted(b))
    for rel in a:
        if a[rel] == b[rel]:
            continue
        assert rel == CROSSFIT_FILE, f"{path}/{rel} differs between the two workers' run and one machine's"
        with np.load(cached(cache_a, a[rel])) as x, np.load(cached(cache_b, b[rel])) as y:
            assert x.files == y.files
            for key in x.files:
                if key in ("mu", "other_mu", "val"):
                    np.testing.assert_allclose(x[key], y[key], rtol=0, atol=CROSSFIT_TOLERANCE,
                                               err_msg=f"{path}/{rel}: {key}")
                else:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{path}/{rel}: {key}")


def _checkout_env(checkout: Path) -> dict:
    """The environment a checkout's commands run in: this venv's tools, that checkout's code."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(checkout)}


def _clone(project: Path, dest: Path) -> tuple[Path, dict]:
    """A fresh clone of the project (code only) and the environment its commands run in."""
    subprocess.run(["git", "clone", "-q", str(project), str(dest)], check=True)
    return dest, _checkout_env(dest)


def _remote_run(project: Path, checkout: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m fulcrum.remote_run`` in ``checkout`` against the project's remote; must succeed."""
    res = subprocess.run([sys.executable, "-m", "fulcrum.remote_run", "--root", str(checkout), "--remote",
                          str(project / "remote"), *args], cwd=checkout, capture_output=True, text=True,
                         env=_checkout_env(checkout), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_with_an_empty_work_tree_pulls_what_it_needs(distributed_run, tmp_path):
    """A new checkout (code only: no data, no DVC cache) runs `score` from the remote alone."""
    project, run_id, state, _ = distributed_run
    assert state == "success", _tail(project)
    fresh, _ = _clone(project, tmp_path / "fresh")
    assert not (fresh / "data").exists()
    res = _remote_run(project, fresh, "--run-id", "rerun-1", "stage", "score", "--",
                      str(BIN / "dvc"), "repro", "--single-item", "score")
    assert f"pulled {[*producers(pipeline(fresh), 'score'), 'score']}" in res.stdout, res.stdout
    current = json.loads((project / "remote" / "current" / "dvc.lock").read_text())
    again = json.loads((project / "remote" / "runs" / "rerun-1" / "lock" / "score.json").read_text())
    # Up to date from the remote (its own report fetched too): DVC reran nothing, the outputs are the run's.
    assert again["outs"] == current["stages"]["score"]["outs"]
    assert "didn't change, skipping" in res.stdout or "Stage 'score' didn't change" in res.stdout, res.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_serving_host_syncs_the_release_and_serves_the_published_scores(distributed_run, tmp_path):
    """A checkout that ran nothing: `remote_run sync`, then `fulcrum serve` answers from Redis."""
    import httpx

    from serving.examples import example_request
    from serving.process import free_port

    project, _, state, _ = distributed_run
    assert state == "success", _tail(project)
    host, env = _clone(project, tmp_path / "serving")
    _remote_run(project, host, "sync")
    release = json.loads((host / "data" / "release.json").read_text())
    assert (host / "data" / "bentoml" / "bentos").is_dir()  # deploy's BentoML store came with the run
    port = free_port()
    fulcrum = [str(BIN / "fulcrum")]
    res = subprocess.run([*fulcrum, "serve", "--background", "--port", str(port)], cwd=host, capture_output=True,
                         text=True, env=env, timeout=300)
    try:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        import pyarrow.parquet as pq

        user = int(pq.read_table(host / "data" / "scores" / "scores.parquet", columns=["user_id"])[0][0].as_py())
        body = example_request(user, ["usage_time", "video_views"], n_recent=2, n_candidates=3)
        got = httpx.post(f"http://127.0.0.1:{port}/decide", json=body, timeout=10)
        assert got.status_code == 200, got.text
        health = httpx.get(f"http://127.0.0.1:{port}/ops/health", timeout=10).json()
        assert health["publication_state"] == "complete" and health["ready"], health
        assert health["online_store"] == "redis" and health["score_date"] == release["score_date"]
        assert health["publication_generation"] >= 1  # the direct reader follows the versioned publication
        assert got.json()["score_date"] == release["score_date"], got.json()
    finally:
        subprocess.run([*fulcrum, "stop"], cwd=host, env=env, timeout=60)
