"""DDM: the label rule, masked pooling, value weights, checkpoints, request arrays, and training."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from models.ddm import (
    DDMNet,
    DDMNetConfig,
    batch_from_numpy,
    exposure_labels,
    exposure_labels_flat,
    value_weights,
)
from models.ddm_io import (
    EXPOSED,
    PARTS,
    RequestArrays,
    arrays_from_lists,
    arrays_from_table,
    labels_from_table,
    load_ddm,
    predict_weights,
    save_ddm,
    weights_for_requests,
)

RESPONSES = ["usage_time", "video_views"]


def small_net(seed: int = 0, n_durations: int = 5, n_categories: int = 12) -> DDMNet:
    torch.manual_seed(seed)
    conf = DDMNetConfig(n_responses=2, n_parts=2, n_durations=n_durations, n_categories=n_categories,
                        emb_dim=8, n_experts=3, expert_hidden=(16, 8), tower_hidden=(8,))
    return DDMNet(conf).eval()


def random_arrays(rng: np.random.Generator, n: int = 6, width: int = 7) -> RequestArrays:
    lengths = rng.integers(0, width + 1, (n, 2))  # some lists empty, some full
    mask = np.arange(width)[None, None, :] < lengths[..., None]
    return RequestArrays(
        duration=np.where(mask, rng.integers(0, 5, (n, 2, width)), 0),
        category=np.where(mask, rng.integers(0, 12, (n, 2, width)), 0),
        scores=np.where(mask[..., None], rng.random((n, 2, width, 2)), 0).astype(np.float32),
        mask=mask,
    )


def item_lists(rng: np.random.Generator, n: int) -> dict:
    return {"duration": rng.integers(0, 5, n).tolist(), "category": rng.integers(0, 12, n).tolist(),
            "scores": {r: rng.random(n).tolist() for r in RESPONSES}}


# --------------------------------------------------------------------------- labels


def test_exposure_labels_count_each_exposed_video_for_its_top_score_lowest_r_on_ties():
    scores = np.array([
        [[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.5, 0.5, 0.1], [0.2, 0.2, 0.9]],  # r0, r1, tie r0/r1 -> r0, r2
        [[0.3, 0.3, 0.3], [0.1, 0.2, 0.7], [0.0, 0.6, 0.6], [0.9, 0.0, 0.0]],  # all tie -> r0, r2, tie -> r1, r0
        [[0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0]],
    ])
    exposed = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    o = exposure_labels(scores, exposed)
    np.testing.assert_allclose(o, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 0]], atol=1e-7)
    # V_r sums to V: the shares of a request with exposures sum to one.
    np.testing.assert_allclose(o[:2].sum(axis=1), 1, atol=1e-6)
    # The flat (ragged) form gives the same numbers and the exposed counts V.
    row = np.repeat(np.arange(3), 4)
    o_flat, v = exposure_labels_flat(scores.reshape(-1, 3), exposed.reshape(-1), row, 3)
    np.testing.assert_allclose(o_flat, o, atol=1e-7)
    assert v.tolist() == [3, 3, 0]


def test_labels_from_ragged_table_use_whole_lists_and_match_the_dense_rule():
    rng = np.random.default_rng(1)
    lengths = [3, 8, 1, 5]
    scores = [rng.random((n, 2)).astype(np.float32) for n in lengths]
    exposed = [rng.random(n) < 0.6 for n in lengths]
    exposed[2][:] = True
    table = pa.table({
        "cand_score__usage_time": [s[:, 0].tolist() for s in scores],
        "cand_score__video_views": [s[:, 1].tolist() for s in scores],
        EXPOSED: [e.tolist() for e in exposed],
    })
    o, v = labels_from_table(table, RESPONSES)
    for i in range(len(lengths)):
        np.testing.assert_allclose(o[i], exposure_labels(scores[i][None], exposed[i][None])[0], atol=1e-7)
        assert v[i] == exposed[i].sum()


# --------------------------------------------------------------------------- network


def test_masked_pooling_ignores_padding_and_equals_the_mean_of_item_embeddings():
    rng = np.random.default_rng(2)
    a = random_arrays(rng)
    net = small_net()
    with torch.no_grad():
        clean = net(a.to_batch())
        enc = net.encoder(a.to_batch())
        # Garbage in every padded slot (huge and negative ids, NaN scores) changes nothing.
        pad = ~a.mask
        dirty = RequestArrays(
            np.where(pad, rng.integers(-50, 10**9, a.mask.shape), a.duration),
            np.where(pad, rng.integers(-50, 10**9, a.mask.shape), a.category),
            np.where(pad[..., None], np.nan, a.scores).astype(np.float32),
            a.mask,
        )
        assert torch.equal(net(dirty.to_batch()), clean)
        # Nor does more padding.
        wide = RequestArrays(*(np.concatenate([x, np.zeros((*x.shape[:2], 5, *x.shape[3:]), x.dtype)], axis=2)
                               for x in (a.duration, a.category, a.scores, a.mask)))
        torch.testing.assert_close(net(wide.to_batch()), clean)
        # The histogram pooling is the plain mean of per-item embeddings (empty lists pool to 0).
        e = net.encoder
        items = (e.duration(torch.from_numpy(a.duration) + 1) + e.category(torch.from_numpy(a.category) + 1)
                 + e.scores(torch.from_numpy(a.scores)))  # (B, P, L, d)
        m = torch.from_numpy(a.mask).unsqueeze(-1)
        ref = (items * m).sum(2) / m.sum(2).clamp_min(1)
        torch.testing.assert_close(enc, ref.flatten(1), atol=1e-6, rtol=1e-5)
    assert (a.mask.sum(axis=2) == 0).any()  # the case of an empty list was exercised


def test_value_weights_are_positive_and_sum_to_one():
    a = random_arrays(np.random.default_rng(3), n=64)
    net = small_net()
    with torch.no_grad():
        o_hat = net(a.to_batch())
    assert o_hat.shape == (64, 2) and (o_hat > 0).all()
    w = value_weights(o_hat)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(64))
    np.testing.assert_allclose(predict_weights(net, a), w.numpy(), rtol=1e-6)


def test_unknown_category_and_duration_ids_do_not_crash_and_add_nothing():
    net = small_net(n_durations=5, n_categories=12)
    rng = np.random.default_rng(4)
    a = random_arrays(rng, n=4)
    odd = a.mask & (rng.random(a.mask.shape) < 0.5)
    b1 = RequestArrays(np.where(odd, 5, a.duration), np.where(odd, -3, a.category), a.scores, a.mask)
    b2 = RequestArrays(np.where(odd, 10**12, a.duration), np.where(odd, 12, a.category), a.scores, a.mask)
    with torch.no_grad():
        out1, out2 = net(b1.to_batch()), net(b2.to_batch())
    assert torch.isfinite(out1).all()
    assert torch.equal(out1, out2)  # every unknown id lands in the same zero bucket
    # Through the service path too, with ids even beyond int64.
    req = [item_lists(rng, 3), item_lists(rng, 4)]
    req[0]["category"][0], req[1]["duration"][1] = 10**30, -(10**30)
    arrays = arrays_from_lists([req], RESPONSES, 50)
    assert np.isfinite(predict_weights(net, arrays)).all()


# --------------------------------------------------------------------------- arrays


def test_ragged_tables_are_padded_and_truncated_like_service_requests():
    import pandas as pd

    rng = np.random.default_rng(5)
    reqs = [[item_lists(rng, n_recent), item_lists(rng, n_cand)] for n_recent, n_cand in ((2, 9), (6, 3), (1, 1))]
    cols: dict[str, list] = {}
    for p, part in enumerate(PARTS):
        names = S.item_columns(part, RESPONSES)
        cols[names[0]] = [r[p]["duration"] for r in reqs]
        cols[names[1]] = [r[p]["category"] for r in reqs]
        for j, resp in enumerate(RESPONSES):
            cols[names[2 + j]] = [r[p]["scores"][resp] for r in reqs]
    table = pa.table(cols)
    a = arrays_from_table(table, RESPONSES, max_items=5)
    assert a.duration.shape == (3, 2, 5) and a.scores.shape == (3, 2, 5, 2)
    assert a.mask.sum(axis=2).tolist() == [[2, 5], [5, 3], [1, 1]]  # 9 candidates kept 5, 6 recent kept 5
    assert a.category[0, 1].tolist() == reqs[0][1]["category"][:5]  # the first items are kept
    np.testing.assert_allclose(a.scores[1, 0, :, 1], reqs[1][0]["scores"]["video_views"][:5], rtol=1e-6)
    b = arrays_from_lists(reqs, RESPONSES, max_items=5)
    for x, y in zip((a.duration, a.category, a.scores, a.mask), (b.duration, b.category, b.scores, b.mask)):
        np.testing.assert_array_equal(x, y)
    c = arrays_from_table(pd.DataFrame(cols), RESPONSES, max_items=50)  # pandas input, no truncation
    assert c.mask.sum(axis=2).tolist() == [[2, 9], [6, 3], [1, 1]]
    with pytest.raises(ValueError, match="scores"):
        arrays_from_lists([[reqs[0][0], {**reqs[0][1], "scores": {"usage_time": [0.1]}}]], RESPONSES, 5)


# --------------------------------------------------------------------------- checkpoint


def test_checkpoint_round_trip_predicts_the_same_and_versions_by_content(tmp_path):
    net = small_net(seed=3)
    v1 = save_ddm(tmp_path / "ddm.pt", net, RESPONSES, 50, {"trained_at": "then"})
    raw = torch.load(tmp_path / "ddm.pt", weights_only=True)  # no pickled code
    assert raw["meta"]["version"] == v1 and raw["meta"]["responses"] == RESPONSES
    assert raw["meta"]["parts"] == list(PARTS) and raw["meta"]["trained_at"] == "then"
    rng = np.random.default_rng(6)
    loaded = load_ddm(tmp_path / "ddm.pt")
    assert loaded.version == v1
    a = random_arrays(rng, n=5, width=9)
    np.testing.assert_array_equal(predict_weights(loaded, a), predict_weights(net, a))
    req = [item_lists(rng, 4), item_lists(rng, 20)]
    w = weights_for_requests(loaded, [req])
    assert w.shape == (1, 2) and abs(w.sum() - 1) < 1e-6
    # Same weights: same version, whatever the unhashed meta; other weights: another version.
    assert save_ddm(tmp_path / "b.pt", net, RESPONSES, 50, {"trained_at": "now"}) == v1
    with torch.no_grad():
        net.towers.out.bias.add_(0.1)
    assert save_ddm(tmp_path / "c.pt", net, RESPONSES, 50, {}) != v1
    assert not list(tmp_path.glob("*.tmp"))


def test_the_numpy_forward_gives_the_torch_networks_weights():
    from models.ddm_numpy import NumpyDDM

    net = small_net(seed=5)
    with torch.no_grad():  # spread the weights so that gates and towers are far from uniform
        for prm in net.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    fast = NumpyDDM.from_net(net)
    rng = np.random.default_rng(9)
    for n, width in ((1, 3), (4, 9), (33, 1), (2, 40)):
        a = random_arrays(rng, n=n, width=width)
        a.duration[0, 0, 0] = 10**6  # an id never seen in training: the zero bucket
        a.category[-1, -1, 0] = -3
        a.mask[0, -1] = False  # an empty list pools to zeros
        a.scores[~a.mask] = np.nan  # garbage in padding must not leak
        got = fast(a.duration, a.category, a.scores, a.mask)
        assert got.dtype == np.float32 and got.shape == (n, 2)
        np.testing.assert_allclose(got, predict_weights(net, a), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- stage


def test_ddm_recovers_the_simulators_interest_mix(tmp_path):
    from pipelines.collect import run_collect
    from pipelines.train_ddm import run_train_ddm

    cfg = FulcrumConfig.model_validate({
        "paths": {"data": "data", "reports": "reports"},
        "source": {"n_users": 6000, "feature_days": 2, "experiment_days": 2, "requests": {"user_share": 0.5}},
        "ddm": {"epochs": 12},
    })
    run_collect(cfg, tmp_path)
    s = run_train_ddm(cfg, tmp_path)
    # Measured: corr 0.44 (labels themselves: 0.52), MSE 0.042 vs 0.055 for the training mean.
    assert s["corr_w_true_mix_mean"] > 0.3
    assert s["val_mse"] < 0.9 * s["val_mse_baseline"]
    assert s["n_train"] + s["n_valid"] == s["n_requests"] > 5000
    assert s["corr_label_true_mix_mean"] > 0.3
    rep = json.loads((tmp_path / "reports" / "ddm.json").read_text())
    assert rep["version"] == s["version"] and set(rep["corr_w_true_mix"]) == set(RESPONSES)
    hist = json.loads((tmp_path / "reports" / "plots" / "ddm_history.json").read_text())
    assert [h["epoch"] for h in hist] == list(range(len(hist))) and {"train_mse", "valid_mse"} <= set(hist[0])
    assert min(h["valid_mse"] for h in hist) == pytest.approx(s["val_mse"], rel=1e-6)
    ck = load_ddm(tmp_path / "data" / "ddm" / "ddm.pt")
    assert ck.version == s["version"] and ck.responses == RESPONSES
    # Validation users are disjoint from training users (split by user).
    import pyarrow.parquet as pq

    from pipelines.train_ddm import split_by_user

    users = pq.read_table(tmp_path / "data" / "rct" / S.REQUESTS_FILE, columns=[S.USER_ID]).column(0).to_numpy()
    valid = split_by_user(users, cfg.ddm.valid_share, cfg.seed)
    assert not set(users[valid]) & set(users[~valid]) and int(valid.sum()) == s["n_valid"]


def test_a_source_without_request_logs_records_a_skip_and_the_fixed_weights_take_over(tmp_path):
    """Was a traceback (exit 1); now the stage says why and the decision uses fixed weights."""
    import json

    from pipelines.train_ddm import run_train_ddm

    cfg = FulcrumConfig.model_validate({"paths": {"data": "data", "reports": "reports"}})
    rct = cfg.paths.rct_dir(tmp_path)
    rct.mkdir(parents=True)
    S.Manifest(source="logs", arms=["control", "t1"], responses=RESPONSES, features=[], n_users=10,
               n_experiment_rows=10, n_feature_rows=10, first_snapshot="2026-11-01",
               last_snapshot="2026-11-01").write(rct)
    out = run_train_ddm(cfg, tmp_path)
    assert out["skipped"] and "no request logs" in out["reason"] and "fixed weights" in out["reason"]
    assert [p.name for p in (tmp_path / "data" / "ddm").iterdir()] == ["SKIPPED"]
    assert json.loads((tmp_path / "reports" / "ddm.json").read_text())["skipped"]
    assert json.loads((tmp_path / "reports" / "plots" / "ddm_history.json").read_text()) == []


def test_batch_from_numpy_keeps_shapes_and_dtypes():
    a = random_arrays(np.random.default_rng(7), n=3, width=4)
    b = batch_from_numpy(a.duration.astype(np.int32), a.category, a.scores.astype(np.float64), a.mask)
    assert b.duration.dtype == torch.int64 and b.scores.dtype == torch.float32 and b.mask.dtype == torch.bool
    assert tuple(b.scores.shape) == (3, 2, 4, 2) and len(b) == 3 and len(b.take(slice(0, 2))) == 2


def test_the_serving_arrays_round_trip_without_torch(tmp_path):
    """The bundle's ddm.npz gives the same weights, and loading and using it imports no torch."""
    import subprocess
    import sys

    from models.ddm_numpy import (
        NumpyDDM,
        list_arrays,
        load_serving_ddm,
        save_serving_ddm,
        weights_for_requests,
    )
    from serving.examples import example_request

    net = small_net(seed=3)
    meta = {"version": "v1", "responses": list(RESPONSES), "max_items": 50}
    save_serving_ddm(tmp_path / "ddm.npz", NumpyDDM.from_net(net), meta)
    got = load_serving_ddm(tmp_path / "ddm.npz")
    assert got.version == "v1" and got.responses == list(RESPONSES)
    reqs = [example_request(u, list(RESPONSES), seed=u) for u in range(4)]
    lists = [(r["recent"], r["candidates"]) for r in reqs]
    want = NumpyDDM.from_net(net)(*list_arrays(lists, RESPONSES, 50))
    np.testing.assert_array_equal(weights_for_requests(got, lists), want)
    (tmp_path / "lists.json").write_text(json.dumps(lists))
    code = (f"import sys, json; from models.ddm_numpy import load_serving_ddm, weights_for_requests; "
            f"d = load_serving_ddm({str(tmp_path / 'ddm.npz')!r}); "
            f"r = json.load(open({str(tmp_path / 'lists.json')!r})); print(weights_for_requests(d, r).shape); "
            "import serving.engine, serving.scores, serving.schemas, models.decision; "
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
