"""collect -> train -> evaluate -> compare on a tiny simulator, through the stage functions."""

from __future__ import annotations

import json

import pytest
import torch

from fulcrum.config import FulcrumConfig
from pipelines.collect import run_collect
from pipelines.compare import run_compare
from pipelines.evaluate import run_evaluate
from pipelines.train import run_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": "data", "reports": "reports"},  # relative to the project root: tmp
        "source": {"n_users": 8000, "feature_days": 2, "experiment_days": 2},
        "train": {"epochs": 2, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [32, 16], "emb_dim": 8},
        "compare": {"models": ["hum", "tarnet", "gbm_t_learner"], "seeds": [1, 2], "bootstrap": 10},
    })
    run_collect(cfg, tmp)
    summary = run_train(cfg, tmp)
    return cfg, tmp, summary


def test_train_writes_a_versioned_checkpoint_and_metrics(trained):
    cfg, tmp, s = trained
    # The training set came through the Feast store of this project root.
    assert (tmp / "feature_repo" / "feature_store.yaml").exists()
    assert (tmp / "data" / "feast" / "registry.db").exists()
    assert (tmp / "data" / "model" / "model.pt").exists()
    blob = torch.load(tmp / "data" / "model" / "model.pt", weights_only=True)
    assert blob["meta"]["version"] == s["version"] and blob["model"] == "hum"
    assert blob["meta"]["target"]["kind"] == "log1p"
    rep = json.loads((tmp / "reports" / "train.json").read_text())
    assert rep["epochs_run"] == 2 and rep["train_samples_per_s"] > 0
    hist = json.loads((tmp / "reports" / "plots" / "train_history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]


def test_evaluate_writes_table_curves_and_html(trained):
    cfg, tmp, s = trained
    ev = run_evaluate(cfg, tmp)
    assert ev["version"] == s["version"]
    assert set(ev["cells"]) == {"t1__usage_time", "t1__video_views", "t2__usage_time", "t2__video_views"}
    for cell in ev["cells"].values():
        assert {"qini", "auuc", "lift30", "pehe", "spearman"} <= set(cell)
    reports = tmp / "reports"
    html = (reports / "evaluate.html").read_text()
    assert "<table>" in html and "data:image/png;base64" in html
    assert (reports / "qini_curves.png").stat().st_size > 1000
    rows = json.loads((reports / "plots" / "qini" / "t1__usage_time.json").read_text())
    assert rows[0]["fraction"] == 0 and rows[-1]["fraction"] == 1
    assert {"model", "oracle", "random"} <= set(rows[0])
    md = (reports / "evaluate.md").read_text()
    assert "| hum |" in md and "| oracle |" in md


def test_compare_judges_every_cell_against_every_baseline(trained):
    cfg, tmp, _ = trained
    s = run_compare(cfg, tmp)
    assert set(s["models"]) == {"hum", "tarnet", "gbm_t_learner", "oracle"}
    assert s["models"]["hum"]["t1__usage_time"]["qini"][1] >= 0  # std over 2 seeds
    for cell in s["verdict"].values():
        assert set(cell) == {"tarnet", "gbm_t_learner"}
        for v in cell.values():
            assert v["lo"] <= v["hi"] and v["status"] in {"better", "tied", "worse"}
    expect = all(v["status"] != "worse" for c in s["verdict"].values() for v in c.values())
    assert s["best_or_tied_everywhere"] == expect
    assert "HUM vs baselines" in (tmp / "reports" / "compare.html").read_text()


def test_score_covers_every_user_with_the_models_delta(trained):
    import numpy as np
    import pandas as pd

    from fulcrum import schema as S
    from models.checkpoint import load_checkpoint
    from models.train import predict_uplift
    from pipelines.feature_store import scores_schema
    from pipelines.score import run_score

    cfg, tmp, s = trained
    small = cfg.model_copy(update={"score": cfg.score.model_copy(update={"chunk_size": 777})})
    out = run_score(small, tmp)
    scores = pd.read_parquet(tmp / "data" / "scores" / "scores.parquet")
    dated = tmp / "data" / "scores" / f"scores_{out['score_date']}.parquet"
    assert dated.exists() and out["model_version"] == s["version"]
    man = S.Manifest.read(tmp / "data" / "rct")
    assert len(scores) == man.n_users and scores[S.USER_ID].is_unique
    import pyarrow.parquet as pq

    assert pq.read_schema(dated).equals(scores_schema(man), check_metadata=False)
    # δ equals the model's prediction on each user's latest snapshot before the score date.
    feats = pd.read_parquet(tmp / "data" / "rct" / S.FEATURES_FILE)
    last = feats.sort_values(S.EVENT_TS).groupby(S.USER_ID).tail(1).sort_values(S.USER_ID)
    ck = load_checkpoint(tmp / "data" / "model" / "model.pt")
    import torch

    expect = predict_uplift(ck.net, torch.from_numpy(ck.encoder.transform(last)), ck.target)
    got = scores.sort_values(S.USER_ID)[["delta__t1__usage_time", "delta__t2__video_views"]].to_numpy()
    assert np.allclose(got[:, 0], expect[:, 0, 0], atol=1e-5) and np.allclose(got[:, 1], expect[:, 1, 1], atol=1e-5)
    # Chunking does not change the result.
    run_score(cfg, tmp)
    again = pd.read_parquet(tmp / "data" / "scores" / "scores.parquet")
    pd.testing.assert_frame_equal(again, scores, check_exact=False, atol=1e-5)  # float32 blocking


def test_a_failed_score_run_keeps_the_previous_scores(trained, monkeypatch):
    import pytest

    from pipelines import score as score_mod

    cfg, tmp, _ = trained
    current = tmp / "data" / "scores" / "scores.parquet"
    score_mod.run_score(cfg, tmp)
    before = current.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("inference failed")

    monkeypatch.setattr("models.train.predict_uplift", boom)
    with pytest.raises(RuntimeError, match="inference failed"):
        score_mod.run_score(cfg, tmp)
    assert current.read_bytes() == before
    assert not list((tmp / "data" / "scores").glob("*.tmp"))
