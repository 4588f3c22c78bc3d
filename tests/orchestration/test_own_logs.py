"""Your own logs all the way to a served decision: CSV logs without request logs, `make run`'s cycle, the service.

The repo generates the logs (``fulcrum example-logs``: the simulator's RCT exported with its
own column names, no request logs), points a project's ``params.yaml`` at them (``--apply``)
and runs ``dvc repro`` under the workspace lock, as ``make run`` does. Without request logs
DDM has nothing to learn from: ``train_ddm`` records the skip, the policy stage and the
release weigh responses with fixed weights, and ``/decide`` takes a bare user id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from test_dag import SETTINGS, _make_project

BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, (args, out.stdout[-3000:], out.stderr[-3000:])
    return out


@pytest.mark.slow
def test_logs_without_requests_reach_a_served_decision(tmp_path_factory):
    settings = {**SETTINGS, "decision": {"weights": {"usage_time": 3.0, "video_views": 1.0}}}
    project = _make_project(tmp_path_factory.mktemp("own-logs"), settings)
    fulcrum = str(BIN / "fulcrum")
    _run([fulcrum, "example-logs", "--users", "3000", "--no-requests", "--apply"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["source"]["type"] == "logs" and "requests" not in params["source"]
    assert sorted(p.name for p in (project / "data" / "example_logs").iterdir()) == ["experiment.csv", "features.csv"]

    _run([sys.executable, "-m", "fulcrum.lock", "--", str(BIN / "dvc"), "repro"], project, timeout=1200)
    ddm = json.loads((project / "reports" / "ddm.json").read_text())
    assert ddm["skipped"] and "no request logs" in ddm["reason"]
    policy = json.loads((project / "data" / "policy" / "policy.json").read_text())
    assert policy["weight_source"] == "fixed" and policy["objective_weights"] == {"usage_time": 0.75,
                                                                                   "video_views": 0.25}
    release = json.loads((project / "data" / "release.json").read_text())
    assert release["weight_source"] == "fixed" and release["ddm_version"] is None
    assert release["weights"] == {"usage_time": 0.75, "video_views": 0.25}
    assert json.loads((project / "reports" / "deploy.json").read_text())["smoke"]["ok"]
    for report in ("train_cpm.json", "fic.json"):  # HMUM only: the CDUM stages ran and recorded a skip
        assert json.loads((project / "reports" / report).read_text())["skipped"]
    assert release["families"] == ["hmum"] and release["cdum"] == {"enabled": False, "reason": "families is ['hmum']"}

    port = _free_port()
    _run([fulcrum, "serve", "--background", "--port", str(port)], project, timeout=300)
    try:
        users = [int(line.split(",")[0]) for line in
                 (project / "data" / "example_logs" / "experiment.csv").read_text().splitlines()[1:4]]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            got = client.post("/decide", json={"user_id": users[0]})  # no item lists: fixed weights need none
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["reason"] == "scored" and body["weights"] == {"usage_time": 0.75, "video_views": 0.25}
            assert body["model_versions"]["ddm"] is None
            health = client.get("/ops/health").json()
            assert health["weight_source"] == "fixed"
    finally:
        _run([fulcrum, "stop"], project)


def _free_port() -> int:
    from serving.process import free_port

    return free_port()
