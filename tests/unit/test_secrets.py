"""Secrets come from the environment (or .fulcrum.secrets), are redacted when printed, and never
reach params.yaml, dvc.lock, the generated feature_store.yaml or the Bento."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fulcrum.config import ConfigError, FulcrumConfig, load_config
from fulcrum.secrets import (
    REDIS_PASSWORD_ENV,
    SecretsError,
    inline_secret,
    load_secrets_file,
    redact,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "s3cr3t-Pa55"


def test_redact_hides_url_and_keyword_passwords_but_not_placeholders():
    assert redact("postgresql+psycopg2://fulcrum:s3cr3t@db:5432/x") == "postgresql+psycopg2://fulcrum:***@db:5432/x"
    assert redact("redis:6379,password=abc,ssl=true") == "redis:6379,password=***,ssl=true"
    assert redact("127.0.0.1:6379,password=${FULCRUM_REDIS_PASSWORD}") == \
        "127.0.0.1:6379,password=${FULCRUM_REDIS_PASSWORD}"
    assert redact("postgresql://postgres@127.0.0.1/db") == "postgresql://postgres@127.0.0.1/db"
    assert inline_secret("x:1,password=abc") and not inline_secret("x:1,password=$P") and not inline_secret(None)


@pytest.mark.parametrize("where,value,env", [
    ("feast.production.redis_connection_string", f"10.0.0.5:6379,password={SECRET}", REDIS_PASSWORD_ENV),
    ("feast.production.registry_url", f"postgresql+psycopg://u:{SECRET}@db/reg", "FULCRUM_REGISTRY_URL"),
    ("airflow.production.sql_alchemy_conn", f"postgresql+psycopg2://u:{SECRET}@db/af", "FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN"),
])
def test_params_refuse_a_secret_and_name_the_variable(tmp_path, where, value, env):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "params.yaml", {where: value})
    assert env in str(err.value) and SECRET not in str(err.value)


def _production(tmp_path: Path) -> FulcrumConfig:
    return load_config(ROOT / "params.yaml", {"feast.profile": "production",
                                              "feast.production.redis_connection_string": "127.0.0.1:6379"})


def test_the_generated_store_yaml_and_the_bundle_hold_a_placeholder(tmp_path, monkeypatch):
    from fulcrum.online_store import redis_from_connection_string
    from pipelines.feature_store import feature_store_settings, write_feature_store_yaml

    monkeypatch.setenv(REDIS_PASSWORD_ENV, SECRET)
    cfg = _production(tmp_path)
    text = write_feature_store_yaml(cfg, tmp_path).read_text()
    assert SECRET not in text and "password=${FULCRUM_REDIS_PASSWORD}" in text
    # Feast expands it at load time; so does Fulcrum's own direct Redis client
    from feast.repo_config import load_repo_config

    repo = tmp_path / cfg.feast.repo_path
    assert SECRET in load_repo_config(repo, repo / "feature_store.yaml").online_store.connection_string
    client = redis_from_connection_string(feature_store_settings(cfg, tmp_path)["online_store"]["connection_string"])
    assert client.connection_pool.connection_kwargs["password"] == SECRET
    client.close()


def test_secrets_file_must_be_private_and_fills_only_what_the_environment_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "recorded")  # so that monkeypatch removes what the loader sets
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    path = tmp_path / ".fulcrum.secrets"
    path.write_text(f"# comment\n{REDIS_PASSWORD_ENV}={SECRET}\n")
    path.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_secrets_file(tmp_path)
    path.chmod(0o600)
    assert load_secrets_file(tmp_path) == [REDIS_PASSWORD_ENV] and os.environ[REDIS_PASSWORD_ENV] == SECRET
    path.write_text("SOMETHING_ELSE=1\n")
    with pytest.raises(SecretsError, match="expected NAME=value"):
        load_secrets_file(tmp_path)


def test_airflow_env_prints_a_reference_not_the_database_password(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    url = f"postgresql+psycopg2://fulcrum:{SECRET}@127.0.0.1:5432/af"
    env = {**os.environ, "FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN": url}
    out = subprocess.run([str(BIN / "fulcrum"), "airflow-env", "--params", str(params), "--set",
                          "airflow.profile=production", "--root", str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout and 'AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN"' \
        in out.stdout
    evaluated = subprocess.run(["bash", "-c", out.stdout + "\nprintf %s \"$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN\""],
                               capture_output=True, text=True, env=env, timeout=30)
    assert evaluated.stdout.endswith(url)  # the shell still gets the real URL


@pytest.mark.slow
def test_airflow_up_keeps_the_generated_login_private(tmp_path):
    """`make airflow`'s script: the generated password file is 0600 and the metadata URL is printed redacted."""
    from serving.process import free_port

    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    (project / "scripts" / "airflow_up.sh").write_text((ROOT / "scripts" / "airflow_up.sh").read_text())
    (project / "dags").symlink_to(ROOT / "dags")
    (project / ".venv").symlink_to(BIN.parent)
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["airflow"] = {**tree.get("airflow", {}), "port": free_port(), "home": "af_home", "parallelism": 2}
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    log = project / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "scripts/airflow_up.sh"], cwd=project, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(240):
            if "Airflow is up" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.5)
        text = log.read_text()
        assert "Airflow is up" in text, text[-3000:]
        passwords = project / "af_home" / "simple_auth_manager_passwords.json.generated"
        assert passwords.exists() and (passwords.stat().st_mode & 0o777) == 0o600, oct(passwords.stat().st_mode)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a slow Airflow shutdown must not hang the suite
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
