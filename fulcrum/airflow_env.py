"""The environment Airflow runs under for this project (light: no Airflow import).

One place turns ``params.yaml`` (section ``airflow``) into ``AIRFLOW__*`` variables:
`make airflow`, `fulcrum airflow-env` and the tests all use it, so the DAG folder, the
loopback binding and the metadata database are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from fulcrum.config import FulcrumConfig
from fulcrum.secrets import AIRFLOW_DB_ENV, env_secret

# Variables whose value may be a secret: `fulcrum airflow-env` prints a reference to the
# environment variable that holds it, never the value.
SECRET_REFERENCES = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": AIRFLOW_DB_ENV}

PROJECT_ENV = "FULCRUM_PROJECT_DIR"  # the DAG's tasks run the DVC stages in this folder
# Set (distributed profile): the tasks run on workers that share no disk, each stage pulling its
# inputs from this remote and pushing its outputs to it (fulcrum.remote_run).
REMOTE_ENV = "FULCRUM_REMOTE_URL"
REMOTE_ENDPOINT_ENV = "FULCRUM_REMOTE_ENDPOINT_URL"  # an S3-compatible store's endpoint (MinIO, Ceph)


def remote_url(cfg: FulcrumConfig, root: Path) -> str:
    """The configured remote as one URL every worker can reach: an absolute path or s3://."""
    rc = cfg.remote
    if rc.type == "s3":
        return rc.url
    return str((Path(root) / rc.path).resolve())


def airflow_env(cfg: FulcrumConfig, root: Path) -> dict[str, str]:
    """``AIRFLOW_*`` variables for the configured profile (absolute paths)."""
    root = Path(root).resolve()
    ac = cfg.airflow
    home = (root / ac.home).resolve()
    url = f"http://{ac.host}:{ac.port}"
    env = {
        "AIRFLOW_HOME": str(home),
        PROJECT_ENV: str(root),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(ac.parallelism),
        # New DAGs start paused (Airflow's default): starting Airflow never starts a run by itself.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": ac.host,
        "AIRFLOW__API__PORT": str(ac.port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
    }
    if ac.profile == "distributed":
        dc = ac.distributed
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = env_secret(AIRFLOW_DB_ENV) or dc.sql_alchemy_conn
        env["AIRFLOW__CORE__EXECUTOR"] = "CeleryExecutor"
        env["AIRFLOW__CELERY__BROKER_URL"] = dc.broker_url
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = dc.result_backend
        env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(dc.worker_concurrency)
        env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] = dc.queue  # every task goes to the workers' queue
        env[REMOTE_ENV] = remote_url(cfg, root)  # tasks move their inputs and outputs through it
        if cfg.remote.type == "s3" and cfg.remote.endpoint_url:
            env[REMOTE_ENDPOINT_ENV] = cfg.remote.endpoint_url
    elif ac.profile == "production":
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = env_secret(AIRFLOW_DB_ENV) or ac.production.sql_alchemy_conn
        env["AIRFLOW__CORE__EXECUTOR"] = ac.production.executor
    else:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
        env["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
    return env
