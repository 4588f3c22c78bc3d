"""collect -> train -> evaluate -> compare on a tiny simulator, through the stage functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_compare import kill_compare_after, record_trained

from fulcrum.config import FulcrumConfig
from pipelines.collect import run_collect
from pipelines.compare import run_compare
from pipelines.evaluate import run_evaluate
from pipelines.train import run_train
from pipelines.training_set import run_training_set


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": "data", "reports": "reports"},  # relative to the project root: tmp
        "source": {"n_users": 8000, "feature_days": 2, "experiment_days": 2},
        "train": {"epochs": 2, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [32, 16], "emb_dim": 8},
        "compare": {"models": ["hum", "tarnet", "gbm_t_learner"], "seeds": [1, 2], "bootstrap": 10},
        "evaluate": {"protocol": "holdout", "bootstrap": 20},  # cross-fitting: tests/model/test_crossfit_stages.py
    })
    run_collect(cfg, tmp)
    run_training_set(cfg, tmp)
    summary = run_train(cfg, tmp)
    return cfg, tmp, summary


def test_training_set_stage_stores_the_feast_frame_and_notices_new_data(trained, caplog):
    import os

    import pandas as pd

    from pipelines import training_set as T

    cfg, tmp, _ = trained
    report = json.loads((tmp / "reports" / "training_set.json").read_text())
    stored = T.stored_frame(cfg, tmp)
    assert stored is not None and len(stored) == report["rows"] == 8000
    pd.testing.assert_frame_equal(stored, T.build_training_frame_feast(cfg.paths.rct_dir(tmp), cfg, tmp))
    assert (stored["event_timestamp"] <= stored["assignment_ts"]).all()
    features = cfg.paths.rct_dir(tmp) / "features.parquet"
    original = features.read_bytes()
    st = features.stat()
    os.utime(features, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a checkout or pull on another worker:
    assert T.stored_frame(cfg, tmp) is not None  # new times, same contents, the frame still holds
    pd.read_parquet(features).iloc[:-1].to_parquet(features)  # new RCT data: the stored frame is stale
    try:
        assert T.stored_frame(cfg, tmp) is None
    finally:
        features.write_bytes(original)
    assert T.stored_frame(cfg, tmp) is not None


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
        assert {"qini", "auuc", "lift30", "pehe", "spearman", "true_qini", "qini_abs", "auuc_abs"} <= set(cell)
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
    oracle = s["models"]["oracle"]["t1__usage_time"]
    assert oracle["spearman"][0] == pytest.approx(1.0) and 0 < oracle["true_qini"][0] <= 1
    assert len(s["per_seed"]["hum"]) == len(cfg.compare.seeds)
    for key, cell in s["verdict"].items():
        assert set(cell["vs"]) == {"tarnet", "gbm_t_learner"}
        o = cell["oracle_minus_random_qini"]
        assert o["lo"] <= o["diff"] <= o["hi"] and cell["counts"] == (o["lo"] > 0)
        for other, v in cell["vs"].items():
            for m in ("spearman", "pehe"):
                assert v[m]["lo"] <= v[m]["diff"] <= v[m]["hi"]
                assert v[m]["status"] in {"better", "tied", "worse"}
            # The paired differences are the per-seed differences of the stored values.
            i = [c for c in s["verdict"]].index(key)
            diffs = [a[i]["spearman"] - b[i]["spearman"] for a, b in zip(s["per_seed"]["hum"], s["per_seed"][other])]
            assert v["spearman"]["diff"] == pytest.approx(np.mean(diffs))
    expect = all(v["status"] != "worse" for c in s["verdict"].values() if c["counts"] for v in c["vs"].values())
    assert s["best_or_tied_everywhere"] == expect
    for i, (key, v) in enumerate(s["seed_spread"].items()):
        rhos = [cells[i]["spearman"] for cells in s["per_seed"]["hum"]]
        assert v["std"] == pytest.approx(np.std(rhos, ddof=1)) and v["lo"] <= v["std"] <= v["hi"]
        assert v["judged"] == s["verdict"][key]["counts"] and v["target"] == cfg.compare.max_seed_std
    assert "HUM vs baselines" in (tmp / "reports" / "compare.html").read_text()
    assert "seed std of ρ(true)" in (tmp / "reports" / "compare.md").read_text()


def test_an_interrupted_compare_resumes_without_recomputing_finished_runs(trained, monkeypatch):
    from pipelines import compare as C

    cfg, tmp, _ = trained
    small = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"models": ["hum", "gbm_t_learner"]})})
    first = C.run_compare(small, tmp)  # finished runs of the full comparison above are reused here
    assert first["runs"]["total"] == 4 and first["runs"]["resumed"] == 4
    store = C.RunStore(small.paths.compare_dir(tmp))
    kill_compare_after(monkeypatch, small, tmp, finished=3)  # killed during the fourth run
    assert len(list(store.folder.glob("*.npz"))) == 3  # each finished run was saved as it finished
    calls = record_trained(monkeypatch)
    again = C.run_compare(small, tmp)
    assert calls == [("gbm_t_learner", 2)] and again["runs"]["resumed"] == 3
    assert again["per_seed"] == first["per_seed"]  # resumed runs give the same table
    changed = small.model_copy(update={"train": small.train.model_copy(update={"lr": 0.002})})
    calls.clear()
    C.run_compare(changed, tmp)
    assert sorted(calls) == [("gbm_t_learner", 1), ("gbm_t_learner", 2), ("hum", 1), ("hum", 2)]  # new settings


def test_seed_std_interval_covers_the_true_std_and_judges_a_target():
    from pipelines.compare import seed_std_interval, spread_status

    rng = np.random.default_rng(0)
    draws = rng.normal(0.7, 0.05, size=(4000, 5))
    cover = np.mean([lo <= 0.05 <= hi for _, lo, hi in map(seed_std_interval, draws)])
    assert 0.93 < cover < 0.97  # a 95 % interval, and it is that wide
    s, lo, hi = seed_std_interval([0.8, 0.82, 0.7, 0.67, 0.78])
    assert lo < s < hi and hi / s == pytest.approx(2.87, abs=0.01)  # five seeds: up to 2.9 × the estimate
    assert spread_status(0.01, 0.006, 0.03, 0.05) == "met"
    assert spread_status(0.2, 0.12, 0.6, 0.05) == "missed"
    assert spread_status(0.04, 0.024, 0.11, 0.05) == "within noise, estimate under"
    assert spread_status(0.06, 0.036, 0.17, 0.05) == "within noise, estimate over"
    assert seed_std_interval([0.5])[2] == np.inf  # one seed has no spread to judge


def test_paired_seed_interval_and_status():
    from pipelines.compare import paired_seed_interval, status

    d, lo, hi = paired_seed_interval([0.1, 0.12, 0.08, 0.11, 0.09])
    assert d == pytest.approx(0.1) and 0 < lo < d < hi  # consistent gains: better
    assert status(lo, hi) == "better" and status(lo, hi, higher_is_better=False) == "worse"
    d, lo, hi = paired_seed_interval([0.1, -0.1, 0.05, -0.04, 0.0])
    assert lo < 0 < hi and status(lo, hi) == "tied"
    assert paired_seed_interval([0.3])[1] == -np.inf  # one seed proves nothing


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


def _online(cfg, tmp, users):
    from pipelines.feature_store import DECISION_SERVICE, get_store

    store = get_store(cfg, tmp)
    return store.get_online_features(
        features=store.get_feature_service(DECISION_SERVICE), entity_rows=[{"user_id": int(u)} for u in users]
    ).to_dict()


def test_publish_serves_the_snapshot_and_is_idempotent(trained):
    import numpy as np
    import pandas as pd

    from pipelines.publish import read_marker, run_publish
    from pipelines.score import run_score

    cfg, tmp, s = trained
    run_score(cfg, tmp)
    out = run_publish(cfg, tmp)
    assert out["model_version"] == s["version"]
    marker = read_marker(cfg, tmp)
    assert marker["state"] == "complete" and marker["served"]["score_date"] == out["score_date"]
    snap = pd.read_parquet(tmp / "data" / "scores" / "scores.parquet").set_index("user_id")
    users = np.random.default_rng(0).choice(snap.index.to_numpy(), 50, replace=False)
    got = _online(cfg, tmp, list(users) + [10**12])  # the last user does not exist
    for name in ("delta__t1__usage_time", "delta__t2__video_views"):
        assert np.allclose(got[name][:-1], snap.loc[users, name].to_numpy(), atol=1e-6)
        assert got[name][-1] is None  # unknown user: absent, not an error
    assert set(got["score_date"][:-1]) == {out["score_date"]} and got["model_version"][-1] is None
    run_publish(cfg, tmp)
    assert _online(cfg, tmp, users) == {k: v[:-1] for k, v in got.items()}


def test_publish_refuses_a_bad_snapshot_and_a_failure_keeps_what_is_served(trained, monkeypatch):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from pipelines import publish as P
    from pipelines.score import run_score

    cfg, tmp, _ = trained
    run_score(cfg, tmp)
    P.run_publish(cfg, tmp)
    served = P.read_marker(cfg, tmp)["served"]
    path = tmp / "data" / "scores" / "scores.parquet"
    good = pq.read_table(path)
    col = good.schema.get_field_index("delta__t1__usage_time")
    x = good.column(col).to_numpy().copy()
    x[:3] = np.nan
    pq.write_table(good.set_column(col, good.schema.field(col), pa.array(x)), path)
    with pytest.raises(P.PublishError, match="3 rows are NaN"):
        P.run_publish(cfg, tmp)
    assert P.read_marker(cfg, tmp)["served"] == served
    # found by probing: a few corrupted bytes gave δ = 9.5e14, finite, and it was published
    x = good.column(col).to_numpy().copy()
    x[:2] = 9.5e14
    pq.write_table(good.set_column(col, good.schema.field(col), pa.array(x)), path)
    with pytest.raises(P.PublishError, match=r"delta__t1__usage_time: 2 rows outside .* 9.5e\+14"):
        P.run_publish(cfg, tmp)
    # plausible one by one, but 5 % of users far outside the last publication's spread
    x = good.column(col).to_numpy().copy()
    x[: len(x) // 20] = 3.0
    pq.write_table(good.set_column(col, good.schema.field(col), pa.array(x)), path)
    with pytest.raises(P.PublishError, match="outside the last publication's range"):
        P.run_publish(cfg, tmp)
    assert P.read_marker(cfg, tmp)["served"] == served
    # a truncated file: one clear line, not a pyarrow traceback
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(P.PublishError, match="not a readable parquet file"):
        P.run_publish(cfg, tmp)
    assert P.read_marker(cfg, tmp)["served"] == served
    pq.write_table(good, path)

    calls = {"n": 0}
    from feast import FeatureStore

    real = FeatureStore.write_to_online_store

    def flaky(self, *a, **k):  # the second chunk fails: a partial publish
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("online store went away")
        return real(self, *a, **k)

    monkeypatch.setattr(FeatureStore, "write_to_online_store", flaky)
    small = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"chunk_size": 1000, "writer": "feast"})})
    with pytest.raises(ConnectionError):
        P.run_publish(small, tmp)
    marker = P.read_marker(cfg, tmp)
    assert marker["state"] == "publishing" and marker["served"] == served  # the last complete one
    assert marker["target"]["model_version"] == served["model_version"]


@pytest.mark.parametrize("name,delta,refused", [("hum", 0.5, True), ("hum_no_kl", 0.5, True), ("hum", None, False),
                                                ("hum_paper", 0.5, False)])
def test_the_robust_loss_is_refused_on_a_binary_response(name, delta, refused):
    """train.huber_delta would fit a binary outcome's median: the stage names the response and stops."""

    from fulcrum.config import TrainConfigModel
    from fulcrum.errors import StageError
    from pipelines.train import check_loss_fits_responses

    rng = np.random.default_rng(0)
    y = np.stack([rng.lognormal(0, 1, 500), (rng.random(500) < 0.3).astype(np.float32)], 1)
    prep = _prep_like(y, rng.integers(0, 3, 500), ["minutes", "voted"])
    tc = TrainConfigModel(huber_delta=delta)
    if refused:
        with pytest.raises(StageError, match="voted"):
            check_loss_fits_responses(prep, name, tc)
    else:
        check_loss_fits_responses(prep, name, tc)
    check_loss_fits_responses(_prep_like(y[:, [0, 0]], prep.arm, ["minutes", "more"]), name, tc)  # continuous: fine


def _prep_like(y: np.ndarray, arm: np.ndarray, responses: list[str]):
    """What the train stage's checks read of a Prepared set: every row a training row, treatments t1, t2."""
    from types import SimpleNamespace

    n = len(y)
    return SimpleNamespace(manifest=SimpleNamespace(responses=responses, treatments=["t1", "t2"]), y=y, arm=arm,
                           x=np.zeros((n, 2), np.int64), encoder=SimpleNamespace(vocab_size=4, sizes_=(2, 2)),
                           rows=lambda part: np.full(n, part == "train"))


@pytest.mark.parametrize("case,match", [("fine", None), ("moved", "t2 moves minutes's zero share"),
                                        ("unknown", "not a response"), ("binary", "takes two values"),
                                        ("no_zero", "no zero")])
def test_positive_part_is_refused_where_it_would_be_wrong(case, match):
    """train.positive_part drops a response's zeros from the fit: refused (naming the response) where a
    treatment moves the zero share, the response is binary or has no zeros, or the name is unknown."""
    from fulcrum.config import TrainConfigModel
    from fulcrum.errors import StageError
    from pipelines.train import check_loss_fits_responses

    rng = np.random.default_rng(3)
    n = 30_000
    arm = rng.integers(0, 3, n)
    p_zero = np.where(arm == 2, 0.12, 0.08) if case == "moved" else np.full(n, 0.08)  # +4 points under t2
    minutes = rng.lognormal(0, 1, n) * (rng.random(n) >= p_zero)
    if case == "binary":
        minutes = (minutes > 1).astype(float)
    if case == "no_zero":
        minutes = minutes + 1.0
    prep = _prep_like(np.stack([minutes, rng.poisson(3.0, n)], 1).astype(np.float32), arm, ["minutes", "views"])
    tc = TrainConfigModel(positive_part=["minutes" if case != "unknown" else "minutez"])
    if match is None:
        check_loss_fits_responses(prep, "hum", tc)
        check_loss_fits_responses(prep, "m3tn", tc)  # a model without the option: nothing to check
        return
    with pytest.raises(StageError, match=match):
        check_loss_fits_responses(prep, "hum", tc)
