"""A release without DDM: fixed value weights when the data has no request logs (or decision.weights is set)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_serving import build_world

from fulcrum.config import FulcrumConfig
from serving.examples import example_request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RESPONSES = ["usage_time", "video_views"]
SETTINGS = {
    "paths": {"data": "data", "reports": "reports"},
    "source": {"n_users": 3000, "feature_days": 2, "experiment_days": 2, "requests": {"user_share": 0.0}},
    "train": {"epochs": 1, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [16, 8], "emb_dim": 8},
    "decision": {"sigma": {"t1": 0.0, "t2": 0.0}, "weights": {"usage_time": 1.0, "video_views": 3.0}},
    "policy": {"calibrate": False, "bootstrap": 20, "max_candidates": 16, "frontier_points": 5},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixed")
    cfg = build_world(SETTINGS, root, policy=True)
    scores = pq.read_table(root / "data" / "scores" / "scores.parquet").to_pandas().set_index("user_id")
    return cfg, root, scores


@pytest.fixture(scope="module")
def engine(world, tmp_path_factory):
    from pipelines.deploy import make_bundle
    from serving.engine import DecisionEngine

    cfg, root, _ = world
    bundle = tmp_path_factory.mktemp("bundle-fixed")
    spec = make_bundle(cfg, root, bundle)
    assert spec["weight_source"] == "fixed" and spec["ddm_version"] is None
    assert not (bundle / "ddm.npz").exists()
    return DecisionEngine(bundle)


def test_without_request_logs_ddm_records_a_skip_and_policy_uses_the_fixed_weights(world):
    cfg, root, _ = world
    ddm = json.loads((root / "reports" / "ddm.json").read_text())
    assert ddm["skipped"] and "no request logs" in ddm["reason"]
    assert [p.name for p in cfg.paths.ddm_dir(root).iterdir()] == ["SKIPPED"]
    policy = json.loads((root / "reports" / "policy.json").read_text())
    assert policy["weight_source"] == "fixed" and policy["fixed_weights"] == {"usage_time": 0.25, "video_views": 0.75}
    assert "Value weights: fixed" in (root / "reports" / "policy.md").read_text()


def test_a_bare_request_is_decided_with_the_fixed_weights(world, engine):
    from serving.schemas import DecideRequest

    _, _, scores = world
    u = int(scores.index[0])
    bare = engine.decide([DecideRequest.model_validate({"user_id": u})])[0]
    full = engine.decide([DecideRequest.model_validate(example_request(u, RESPONSES))])[0]
    assert bare.reason == "scored" and bare.weights == {"usage_time": 0.25, "video_views": 0.75}
    assert bare.model_dump() == full.model_dump()  # item lists are accepted and ignored
    delta = np.array([[scores.loc[u, f"delta__{t}__{r}"] for r in RESPONSES] for t in ("t1", "t2")])
    assert [bare.phi[t] for t in ("t1", "t2")] == pytest.approx((delta @ [0.25, 0.75]).tolist(), abs=1e-6)
    assert bare.model_versions["ddm"] is None and engine.status()["weight_source"] == "fixed"


def test_fixed_weights_are_checked_and_bare_requests_pass_the_limits():
    from serving.schemas import DecideRequest, check_limits

    check_limits([DecideRequest.model_validate({"user_id": 1})], RESPONSES, 10, 4)  # whether lists are needed: engine
    with pytest.raises(ValueError, match="weights must be ≥ 0"):
        FulcrumConfig.model_validate({"decision": {"weights": {"usage_time": -1.0}}})
    with pytest.raises(ValueError, match=r"decision.weights names \['watch'\]"):
        FulcrumConfig.model_validate({"decision": {"weights": {"watch": 1.0}}})
