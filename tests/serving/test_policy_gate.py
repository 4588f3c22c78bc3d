"""The policy stage end to end, and the policy gate on deploy.

A small world with strong effects and light outcome noise (so a guard-rail can tell a
−13 % harm from noise at ~4,500 test users), a combined arm t1+t2, then: the policy
stage's outputs; a safe release (σ by hand, nothing switched on: its lift is exactly 0);
a planted harmful policy (σ set by hand so t2 is on for everyone, though t2 costs usage
time) that the gate refuses while the previous release keeps serving (on a first install,
with nothing released yet, it releases every treatment off instead); the same forced
through, recorded in the release.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_serving import build_world

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SETTINGS = {
    "paths": {"data": "data", "reports": "reports"},
    "source": {"n_users": 30000, "feature_days": 2, "experiment_days": 2, "effect_scale": 10.0, "noise_scale": 0.1,
               "combined_arms": ["t1+t2"], "arm_shares": [0.34, 0.24, 0.24, 0.18],
               "requests": {"user_share": 0.5}},
    "train": {"epochs": 3, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [16, 8], "emb_dim": 8},
    "ddm": {"epochs": 3},
    "policy": {"bootstrap": 100, "max_candidates": 64, "frontier_points": 7},
    "serve": {"max_items": 64, "max_batch": 8},
}
MANUAL = ["--set", "policy.calibrate=false"]
SAFE = [*MANUAL, "--set", "decision.sigma.t1=1000", "--set", "decision.sigma.t2=1000"]
HARMFUL = [*MANUAL, "--set", "decision.sigma.t1=1000", "--set", "decision.sigma.t2=-1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pipelines.policy import run_policy

    root = tmp_path_factory.mktemp("policy")
    cfg = build_world(SETTINGS, root)
    summary = run_policy(cfg, root)
    (root / "params.yaml").write_text(yaml.safe_dump(SETTINGS))
    return cfg, root, summary


def _fulcrum(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "fulcrum")
    return subprocess.run([exe, *args, "--params", str(root / "params.yaml"), "--root", str(root)],
                          capture_output=True, text=True, timeout=600)


def test_policy_stage_writes_reports_and_the_decision(world):
    cfg, root, s = world
    decision = json.loads((root / "data" / "policy" / "policy.json").read_text())
    for name in ("policy.md", "policy.html", "policy.json", "frontier.png", "plots/frontier.json"):
        assert (root / "reports" / name).stat().st_size > 0, name
    names = set(s["policies"])
    assert {"all-control", "all-t1", "all-t2", "all-t1+t2", "greedy-usage_time", "greedy-video_views", "fixed-weight", "hmum",
            "random", "oracle"} <= names
    hm = s["policies"]["hmum"]
    assert hm["coverage"] == 1.0  # the RCT has t1+t2, so every decision is valuable
    assert s["policies"]["random"]["treated_share"] == pytest.approx(hm["treated_share"])
    # The calibrated σ respects the guard-rails on the validation users it was chosen on.
    cal = s["calibration"]["hmum"]
    assert all(lo >= -0.01 - 1e-12 for lo in cal["rel_lift_lo"])
    assert decision["sigma"] == {t: v for t, v in zip(["t1", "t2"], cal["sigma"], strict=True)}
    assert decision["sigma_source"] == "calibrated" and decision["mode"] == "independent"
    # Truth is known: the oracle sees it, and every table row carries the true value.
    table = json.loads((root / "reports" / "policy_table.json").read_text())
    assert all("truth" in r for r in table)
    assert s["targets"]["dr_interval_covers_truth"] >= 0.5
    frontier = json.loads((root / "reports" / "plots" / "frontier.json").read_text())
    assert {p["series"] for p in frontier} >= {"hmum", "fixed-weight", "oracle", "all-t1"}
    md = (root / "reports" / "policy.md").read_text()
    assert "Released decision" in md and "oracle" in md


def test_gate_blocks_a_harmful_policy_and_keeps_the_release(world):
    cfg, root, _ = world
    # A first install with a blocked policy: nothing was released, so "the previous state
    # stays" is every treatment off, and the service still comes up with that.
    assert not (root / "data" / "release.json").exists()
    assert "BLOCKED" in _fulcrum(root, "policy", *HARMFUL).stdout
    first = _fulcrum(root, "deploy", *HARMFUL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "every treatment OFF" in first.stderr
    release0 = json.loads((root / "data" / "release.json").read_text())
    assert release0["sigma"] == {"t1": None, "t2": None}
    assert release0["policy"]["gate"] == "blocked" and release0["policy"]["problems"]
    assert release0["policy"]["sigma_source"].startswith("all off")

    safe = _fulcrum(root, "policy", *SAFE)
    assert safe.returncode == 0 and "gate passed" in safe.stdout, safe.stdout[-2000:] + safe.stderr[-2000:]
    ok = _fulcrum(root, "deploy", *SAFE)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    release = json.loads((root / "data" / "release.json").read_text())
    assert release["policy"] == {"sigma_source": "decision.sigma", "gate": "passed", "forced": False, "problems": []}

    pol = _fulcrum(root, "policy", *HARMFUL)
    assert pol.returncode == 0 and "BLOCKED" in pol.stdout, pol.stdout[-2000:] + pol.stderr[-2000:]
    decision = json.loads((root / "data" / "policy" / "policy.json").read_text())
    assert not decision["gate"]["passed"] and any("usage_time" in p for p in decision["gate"]["problems"])
    table = {r["policy"]: r for r in json.loads((root / "reports" / "policy_table.json").read_text())}
    assert table["hmum"]["truth"]["rel_lift"][0] < -0.05  # the planted policy does cost usage time

    refused = _fulcrum(root, "deploy", *HARMFUL)
    assert refused.returncode != 0
    assert "policy gate blocks" in refused.stderr and "usage_time" in refused.stderr and "guard-rail" in refused.stderr
    assert json.loads((root / "data" / "release.json").read_text()) == release  # the previous release stays

    forced = _fulcrum(root, "deploy", *HARMFUL, "--set", "policy.force=true")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    after = json.loads((root / "data" / "release.json").read_text())
    assert after["bento"] != release["bento"]
    assert after["policy"]["forced"] and after["policy"]["gate"] == "forced" and after["policy"]["problems"]
    assert after["sigma"] == {"t1": 1000.0, "t2": -1.0}


def test_deploy_refuses_a_policy_of_another_model_or_mode(world):
    from pipelines.deploy import DeployError, release_policy

    cfg, root, _ = world
    decision = json.loads((root / "data" / "policy" / "policy.json").read_text())
    with pytest.raises(DeployError, match="re-run policy"):
        release_policy(cfg, root, "not-the-served-model")
    other = cfg.model_copy(update={"decision": cfg.decision.model_copy(update={"mode": "exclusive"})})
    with pytest.raises(DeployError, match="decision mode"):
        release_policy(other, root, decision["hum_version"])
    no_gate = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"gate": False})})
    empty = root / "elsewhere"
    no_gate_elsewhere = no_gate.model_copy(update={"paths": no_gate.paths.model_copy(update={"data": str(empty)})})
    assert release_policy(no_gate_elsewhere, root, "x")["sigma_source"] == "decision.sigma"
    with pytest.raises(FileNotFoundError, match="fulcrum policy"):
        release_policy(cfg.model_copy(update={"paths": no_gate_elsewhere.paths}), root, "x")


def test_a_treatment_never_on_is_served_as_null_sigma(world, tmp_path):
    from pipelines.deploy import make_bundle
    from serving.engine import DecisionEngine
    from serving.examples import example_request
    from serving.schemas import DecideRequest

    cfg, root, _ = world
    make_bundle(cfg, root, tmp_path, sigma={"t1": None, "t2": -1.0})
    engine = DecisionEngine(tmp_path)
    users = json.loads((root / "reports" / "score.json").read_text())["n_users"]
    assert users > 0
    import pyarrow.parquet as pq

    uid = int(pq.read_table(root / "data" / "scores" / "scores.parquet", columns=["user_id"]).column(0)[0].as_py())
    req = DecideRequest.model_validate(example_request(uid, cfg.source.responses))
    (d,) = engine.decide([req])
    assert d.reason == "scored" and d.decisions == {"t1": False, "t2": True}
    assert d.sigma == {"t1": None, "t2": -1.0} and engine.status()["sigma"]["t1"] is None
    assert np.isinf(engine.sigma[0])
