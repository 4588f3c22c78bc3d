"""CDUM as the second family: published beside HMUM, valued by the policy stage, served by the same service.

One small duration-mix world (3 treatments) runs both families through the real stages
(simulator, Feast, HUM, CPM, FIC, score, SQLite publish, DDM, policy); the engine is
checked in-process against the rule computed by hand, then over HTTP on a real
``bentoml serve`` with one model store entry per family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_serving import build_world, make_models, serving_at

from fulcrum.config import ConfigError, FulcrumConfig
from serving.examples import example_request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RESPONSES = ["usage_time", "video_views"]
TREATMENTS = ["short", "medium", "long"]
SETTINGS = {
    "families": ["hmum", "cdum"],
    "paths": {"data": "data", "reports": "reports"},
    "source": {"n_users": 4000, "feature_days": 2, "experiment_days": 2, "scenario": "duration_mix",
               "treatments": TREATMENTS, "combined_arms": [], "arm_shares": None, "requests": {"user_share": 0.5}},
    "train": {"epochs": 2, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [16, 8], "emb_dim": 8},
    "ddm": {"epochs": 2},
    "cdum": {"fic": {"epochs": 3}},
    "decision": {"sigma": {}},
    # σ and ξ as configured (calibration on 600 users switches everything off): the rule is what is tested.
    "policy": {"calibrate": False, "bootstrap": 20, "max_candidates": 16, "frontier_points": 5},
    "serve": {"max_items": 64, "max_batch": 8},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdum")
    cfg = build_world(SETTINGS, root, policy=True)
    scores = pq.read_table(root / "data" / "scores" / "scores.parquet").to_pandas().set_index("user_id")
    return cfg, root, scores


@pytest.fixture(scope="module")
def bundles(world, tmp_path_factory) -> tuple[Path, Path]:
    from pipelines.deploy import cdum_release, make_bundle, make_cdum_bundle
    from pipelines.publish import read_marker

    cfg, root, _ = world
    hmum, cdum = tmp_path_factory.mktemp("hmum-bundle"), tmp_path_factory.mktemp("cdum-bundle")
    make_bundle(cfg, root, hmum)
    # ξ as configured, whatever the gate says of this 4,000-user world (its verdict moves with the
    # models' noise): the rule is what these tests check; the blocked release has its own test below.
    ungated = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"gate": False})})
    make_cdum_bundle(cfg, root, cdum, cdum_release(ungated, root, read_marker(cfg, root)["served"]))
    return hmum, cdum


@pytest.fixture(scope="module")
def engine(bundles):
    from serving.engine import DecisionEngine

    return DecisionEngine(bundles[0], cdum_bundle=bundles[1])


def _req(user_id: int, policy: str | None = None, seed: int = 0):
    from serving.schemas import DecideRequest

    return DecideRequest.model_validate({**example_request(user_id, RESPONSES, seed=seed), "policy": policy})


def test_the_cycle_trains_cpm_and_fic_and_publishes_cpm_outcomes_beside_delta(world):
    from pipelines.publish import read_marker

    cfg, root, scores = world
    cpm = json.loads((root / "reports" / "train_cpm.json").read_text())
    assert cpm["model"] == "cpm" and {"mean_qini", "mean_spearman", "mean_pehe"} <= set(cpm["test"])
    fic = json.loads((root / "reports" / "fic.json").read_text())
    assert set(fic["corr_true_interest"]) == set(TREATMENTS)
    mu = [f"mu__{a}__{r}" for a in ["control", *TREATMENTS] for r in RESPONSES]
    assert set(mu) <= set(scores.columns) and (scores[mu].to_numpy() > 0).all()
    assert (scores["cpm_version"] == cpm["version"]).all()
    served = read_marker(cfg, root)["served"]
    assert served["cpm_version"] == cpm["version"] and served["model_version"] == scores["model_version"].iloc[0]


def test_policy_stage_values_cdum_beside_hmum_on_the_same_users(world):
    cfg, root, _ = world
    summary = json.loads((root / "reports" / "policy.json").read_text())
    assert {"hmum", "cdum", "cdum ξ=0", "cpm alone ξ=0 (r̂=1)"} <= set(summary["policies"])
    assert {"cdum_true_objective", "cdum_xi0_beats_every_single_strategy"} <= set(summary["targets"])
    decision = json.loads((root / "data" / "policy" / "policy.json").read_text())["cdum"]
    assert decision["xi"] == dict.fromkeys(TREATMENTS, 0.0) and decision["xi_source"] == "cdum.xi"
    assert decision["cpm_version"] == summary["cdum"]["cpm_version"] and set(decision["scale"]) == set(RESPONSES)
    frontier = json.loads((root / "reports" / "plots" / "frontier.json").read_text())
    assert {"hmum", "cdum"} <= {p["series"] for p in frontier}


def test_engine_cdum_answers_follow_the_rule_computed_by_hand(world, bundles, engine):
    from models.ddm_numpy import list_arrays, load_serving_ddm
    from models.decision import apply_mode

    _, _, scores = world
    spec = json.loads((bundles[1] / "cdum.json").read_text())
    assert spec["xi"] == dict.fromkeys(TREATMENTS, 0.0)  # the thresholds the hand computation uses
    fic = load_serving_ddm(bundles[1] / "fic.npz")
    users = [int(u) for u in scores.index[:6]]
    reqs = [_req(u, "cdum", seed=i) for i, u in enumerate(users)]
    out = engine.decide(reqs)
    r_hat = fic.fast.outputs(*list_arrays([(r.recent, r.candidates) for r in reqs], RESPONSES, fic.max_items))
    w = np.array([spec["weights"][r] for r in RESPONSES])
    s = np.array([spec["scale"][r] for r in RESPONSES])
    values = []
    for i, (d, u) in enumerate(zip(out, users, strict=True)):
        mu0 = np.array([scores.loc[u, f"mu__control__{r}"] for r in RESPONSES])
        gains = [float(np.sum(w * (r_hat[i, k] * np.array([scores.loc[u, f"mu__{t}__{r}"] for r in RESPONSES])
                                   - mu0) / s)) for k, t in enumerate(TREATMENTS)]
        values.append(gains)
        assert d.policy == "cdum" and d.reason == "scored" and d.mode == "exclusive"
        assert [d.phi[t] for t in TREATMENTS] == pytest.approx(gains, rel=1e-5, abs=1e-6)
        assert [d.interest[t] for t in TREATMENTS] == pytest.approx(r_hat[i].tolist(), rel=1e-6)
        assert d.model_versions == {"cpm": scores.loc[u, "cpm_version"], "fic": fic.version}
        # On the ratio 1 + δ: δ is a difference of float32 outcomes, so its error is relative to the ratio, not to δ.
        assert 1 + d.delta["long"]["usage_time"] == pytest.approx(
            scores.loc[u, "mu__long__usage_time"] / scores.loc[u, "mu__control__usage_time"], rel=1e-6)
    on = apply_mode(np.array(values), 0.0, "exclusive")
    assert [[d.decisions[t] for t in TREATMENTS] for d in out] == on.tolist()
    assert engine.decide([_req(10**12, "cdum")])[0].reason == "no_scores"


def test_a_mixed_batch_answers_each_request_with_its_own_policy_in_order(world, engine):
    _, _, scores = world
    a, b = (int(u) for u in scores.index[:2])
    reqs = [_req(a, "hmum"), _req(b, "cdum", 1), _req(b, None, 2), _req(a, "cdum", 3)]
    mixed = engine.decide(reqs)
    alone = [engine.decide([r])[0] for r in reqs]
    assert [d.policy for d in mixed] == ["hmum", "cdum", "hmum", "cdum"]  # null: the release's default, hmum
    assert [d.model_dump() for d in mixed] == [d.model_dump() for d in alone]


def test_health_shows_each_family_and_the_default(world, engine):
    _, _, scores = world
    status = engine.status()
    assert status["policies"] == ["hmum", "cdum"] and status["default_policy"] == "hmum"
    fam = status["families"]
    assert fam["cdum"]["model_versions"]["cpm"] == scores["cpm_version"].iloc[0]
    assert fam["hmum"]["model_versions"]["hum"] == scores["model_version"].iloc[0]
    assert fam["cdum"]["score_date"] == fam["hmum"]["score_date"] == scores["score_date"].iloc[0]


def test_cdum_first_in_families_makes_it_the_default_policy(world, bundles, tmp_path):
    from pipelines.deploy import make_bundle
    from serving.engine import DecisionEngine

    cfg, root, scores = world
    make_bundle(cfg.model_copy(update={"families": ["cdum", "hmum"]}), root, tmp_path)
    engine = DecisionEngine(tmp_path, cdum_bundle=bundles[1])
    assert engine.default_policy == "cdum"
    assert engine.decide([_req(int(scores.index[0]))])[0].policy == "cdum"


def test_a_release_without_cdum_refuses_cdum_requests_by_name(bundles):
    from serving.engine import DecisionEngine
    from serving.schemas import LimitError

    engine = DecisionEngine(bundles[0])  # no CDUM entry: HMUM only
    assert engine.policies == ["hmum"] and "cdum" not in engine.status()["families"]
    with pytest.raises(LimitError, match="policy: 'cdum' is not in this release"):
        engine.decide([_req(1, "cdum")])


def test_publish_refuses_impossible_cpm_outcomes(world):
    import pyarrow as pa

    from fulcrum import schema as S
    from pipelines.publish import PublishError, check_snapshot

    cfg, root, _ = world
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    table = pq.read_table(root / "data" / "scores" / "scores.parquet")
    col = table.column_names.index("mu__short__video_views")
    bad = table.column(col).to_numpy().copy()
    bad[3] = -2.0
    with pytest.raises(PublishError, match="mu__short__video_views: 1 rows are NaN, infinite or negative"):
        check_snapshot(table.set_column(col, "mu__short__video_views", pa.array(bad)), man, cdum=True)
    with pytest.raises(PublishError, match="no column"):
        check_snapshot(table.drop(["cpm_version"]), man, cdum=True)


def test_deploy_refuses_a_cdum_valued_for_another_cpm_and_switches_a_blocked_cdum_off(world, monkeypatch):
    from pipelines import policy as P
    from pipelines.deploy import DeployError, cdum_release
    from pipelines.publish import read_marker

    cfg, root, _ = world
    served = read_marker(cfg, root)["served"]
    with pytest.raises(DeployError, match="evaluated CPM .* serves CPM other"):
        cdum_release(cfg, root, {**served, "cpm_version": "other"})
    decision = P.read_decision(cfg, root)
    blocked = {**decision, "cdum": {**decision["cdum"], "gate": {"passed": False, "problems": ["too risky"]}}}
    monkeypatch.setattr(P, "read_decision", lambda *a: blocked)
    part = cdum_release(cfg, root, served)
    assert part["enabled"] and part["gate"] == "blocked" and part["xi"] == dict.fromkeys(TREATMENTS)
    hmum_only = cdum_release(cfg.model_copy(update={"families": ["hmum"]}), root, served)
    assert hmum_only == {"enabled": False, "reason": "families is ['hmum']"}


def test_without_cdum_its_stages_record_a_skip_and_leave_no_model(world, tmp_path):
    import shutil

    from pipelines.train_cpm import run_train_cpm
    from pipelines.train_fic import run_train_fic

    cfg, root, _ = world
    shutil.copytree(root / "data" / "cpm", tmp_path / "data" / "cpm")
    hmum_only = cfg.model_copy(update={"families": ["hmum"]})
    for run, folder, report in ((run_train_cpm, "cpm", "train_cpm.json"), (run_train_fic, "fic", "fic.json")):
        assert run(hmum_only, tmp_path)["skipped"]
        assert [p.name for p in (tmp_path / "data" / folder).iterdir()] == ["SKIPPED"]
        assert json.loads((tmp_path / "reports" / report).read_text())["skipped"]


def test_families_are_checked():
    for bad, message in ((["cdum"], "must include 'hmum'"), (["hmum", "hmum"], "twice"),
                         (["hmum", "xyz"], "unknown families")):
        with pytest.raises((ValueError, ConfigError), match=message):
            FulcrumConfig.model_validate({"families": bad})


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server(world, bundles, tmp_path_factory):
    """The service (by import path) with one BentoML model per family, in its own store."""
    _, root, _ = world
    home = tmp_path_factory.mktemp("bentoml-cdum")
    hmum_tag, cdum_tag = make_models(home, {"fulcrum-decision": bundles[0], "fulcrum-cdum": bundles[1]})
    env = {"BENTOML_HOME": str(home), "FULCRUM_DECISION_MODEL": hmum_tag, "FULCRUM_CDUM_MODEL": cdum_tag}
    with serving_at("serving.service:FulcrumDecision", env, root / "server-cdum.log") as client:
        yield client


def test_http_serves_both_policies_like_the_engine(world, engine, server):
    _, _, scores = world
    u = int(scores.index[0])
    body = example_request(u, RESPONSES)
    for policy in ("hmum", "cdum"):
        r = server.post("/decide", json={**body, "policy": policy})
        assert r.status_code == 200, r.text
        local = engine.decide([_req(u, policy)])[0].model_dump()
        got = r.json()
        assert got["policy"] == policy and got["decisions"] == local["decisions"]
        assert np.allclose([got["phi"][t] for t in TREATMENTS], [local["phi"][t] for t in TREATMENTS], atol=1e-6)
    batch = server.post("/decide_batch", json={"requests": [{**body, "policy": "cdum"}, body]})
    assert [d["policy"] for d in batch.json()["results"]] == ["cdum", "hmum"]
    bad = server.post("/decide", json={**body, "policy": "xyz"})
    assert bad.status_code == 400 and "policy" in bad.text
    health = server.get("/ops/health").json()
    assert set(health["families"]) == {"hmum", "cdum"} and health["default_policy"] == "hmum"
