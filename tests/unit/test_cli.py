"""The `fulcrum` command: help, config errors, a real collect run."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from fulcrum.cli import app

runner = CliRunner()


def test_help_lists_the_stages():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    stages = ("collect", "training-set", "train", "evaluate", "score", "publish", "train-ddm", "deploy", "serve",
              "compare", "config", "report")
    for cmd in stages:
        assert cmd in out.output
    for cmd in stages:
        sub = runner.invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "--params" in sub.output


def test_cli_import_stays_light():
    code = "import sys, fulcrum.cli; heavy = {'torch', 'feast', 'evidently', 'airflow', 'pandas'} & set(sys.modules); print(sorted(heavy)); sys.exit(bool(heavy))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_bad_config_exits_nonzero_with_the_setting(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("source: {type: simulator, n_users: 0}\n")
    out = runner.invoke(app, ["config", "--params", str(p)])
    assert out.exit_code == 2
    assert "source.n_users" in out.output


def test_collect_runs_and_report_prints(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(f"paths: {{data: {tmp_path}/d, reports: {tmp_path}/r}}\n")
    out = runner.invoke(app, ["collect", "-p", str(p), "--set", "source.n_users=500",
                              "--set", "source.feature_days=1", "--set", "source.experiment_days=1"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "d" / "rct" / "experiment.parquet").exists()
    assert "collected 500 users" in out.output
    rep = runner.invoke(app, ["report", "-p", str(p)])
    assert rep.exit_code == 0 and "Naive ATE" in rep.output


def test_collect_contract_error_exits_nonzero(tmp_path):
    p = tmp_path / "p.yaml"
    (tmp_path / "e.csv").write_text("u,ts,g,y\n1,2026-01-01,0,1.0\n")
    (tmp_path / "f.csv").write_text("u,ts,x\n1,2025-12-31,3\n")
    p.write_text(
        f"""paths: {{data: {tmp_path}/d, reports: {tmp_path}/r}}
source:
  type: logs
  experiment:
    path: {tmp_path}/e.csv
    user_id: u
    timestamp: ts
    treatment: {{column: g, values: {{0: control, 1: t1}}}}
    responses: {{usage_time: y}}
  features: {{path: {tmp_path}/f.csv, user_id: u, timestamp: ts, numeric: {{x: x}}}}
"""
    )
    out = runner.invoke(app, ["collect", "-p", str(p)])
    assert out.exit_code == 2
    assert "nothing was changed" in out.output and "experiment" in out.output
    assert not (tmp_path / "d" / "rct").exists()
