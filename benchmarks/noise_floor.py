"""The noise floor of test QINI on the simulator: random vs oracle rankings (issue 12, item 1).

For each planned (n_users, simulator seed): simulate the default RCT (params.yaml with
``seed`` = ``source.seed`` = the seed and ``source.n_users``) through the collect stage
into a temporary directory, take the test users of the default split (single arms, as
the evaluate stage does) with their observed responses and their true expected outcomes
mu (n, K+1, R), and for every (treatment, response) cell score three rankings:

- ``random``: no information (a fresh random order for every resample);
- ``oracle_rel``: the true relative effect δ = mu_k / mu_0 − 1 (what HUM publishes and
  what the evaluate stage calls the oracle);
- ``oracle_abs``: the true absolute effect τ = mu_k − mu_0 (what QINI/AUUC reward).

Per ranking: the observed normalized QINI and AUUC (fulcrum.metrics' definitions, as the
evaluate stage computes them) on the whole test set and over B bootstrap resamples of
test users (mean, std, 2.5 / 97.5 %), the paired probability over resamples that each
oracle beats random, and the deterministic true QINI (fulcrum.metrics.truth: area of the
true cumulative gain Σ(mu_k − mu_0); also on the relative gain Σδ). From the paired
bootstrap std of oracle − random, scaled by 1/√n, the number of users each cell needs
for the oracle's QINI to exceed random by 3 std. Prints tables and a recommended
protocol; writes the numbers as JSON.

The bootstrap is vectorized: each resample is a vector of row counts, and a curve over
the resample is a cumulative sum of counts-weighted rows in the ranking's fixed order
(rows with count 0 add zero-width segments; duplicates form one tie group, as in the
project's curves). The script checks this against ``qini_auc_score`` /
``uplift_auc_score`` on the full sample and on one resample per cell.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/noise_floor.py \\
        --plan 200000:7,8,9 1000000:7 --bootstrap 200 --out docs/noise_floor.json

``--verify`` also builds the evaluate stage's own frame (pipelines.training_set.prepare,
``prep.true_mu``) for the first run and checks that the test users, responses and true
mu read here are the same (slow at 1M users: use it on a small run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RANKINGS = ("random", "oracle_rel", "oracle_abs")
ORACLES = ("oracle_rel", "oracle_abs")
Z_TARGET = 3.0
DEFAULT_SPLIT = (0.7, 0.15, 0.15)  # params.yaml train.split, for the suggested test size


# --------------------------------------------------------------------------- data


def load_test(cfg, root: Path) -> dict:
    """Test users of the default split: user_id, arm, y (n, R), true mu (n, K+1, R), in user-id order.

    The same rows and truth as ``prepare(...).rows("test")`` / ``prep.true_mu(rct, "test")``
    (checked by ``--verify``) without building features, which a 1M-user as-of join would.
    """
    import pyarrow.parquet as pq

    from fulcrum import schema as S
    from pipelines.training_set import _experiment, single_arm_rows, split_users

    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    if not man.has_truth:
        raise SystemExit("the source has no truth: the noise floor needs the simulator")
    frame = single_arm_rows(_experiment(rct, man), man)
    frame = frame.sort_values(S.USER_ID, kind="stable").reset_index(drop=True)
    split = split_users(frame[S.USER_ID].to_numpy(), tuple(cfg.train.split), cfg.seed)
    test = frame[split == 2]
    cols = [S.truth_column(a, r) for a in man.arms for r in man.responses]
    truth = pq.read_table(rct / S.TRUTH_FILE, columns=[S.USER_ID, *cols]).to_pandas().set_index(S.USER_ID)
    users = test[S.USER_ID].to_numpy()
    mu = truth.loc[users, cols].to_numpy(np.float64).reshape(len(users), len(man.arms), len(man.responses))
    return {
        "user_id": users,
        "arm": test[S.ARM_INDEX].to_numpy(np.int64),
        "y": test[man.responses].to_numpy(np.float64),
        "mu": mu,
        "arms": list(man.arms),
        "responses": list(man.responses),
        "n_single": int(len(frame)),
    }


def verify_against_prepare(cfg, root: Path, data: dict) -> None:
    from pipelines.training_set import prepare

    rct = cfg.paths.rct_dir(root)
    prep = prepare(rct, cfg.train.split, cfg.seed, cfg.train.n_bins, target=cfg.train.target)
    rows = prep.rows("test")
    from fulcrum import schema as S

    assert np.array_equal(prep.frame.loc[rows, S.USER_ID].to_numpy(), data["user_id"]), "test users differ"
    assert np.array_equal(prep.arm[rows], data["arm"]), "arms differ"
    np.testing.assert_allclose(prep.y[rows], data["y"], rtol=1e-6)  # prepare keeps float32
    np.testing.assert_array_equal(prep.true_mu(rct, "test"), data["mu"])
    print("verify: test users, arms, responses and true mu match prepare()/prep.true_mu", flush=True)


# --------------------------------------------------------------------------- vectorized curves


def _trapz_rows(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sum(np.diff(x, axis=1) * (v[:, 1:] + v[:, :-1]) / 2.0, axis=1)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _areas(w: np.ndarray, y: np.ndarray, t: np.ndarray, ends: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Qini area, uplift area, end point (N, Q(N)) of weighted rows already in rank order.

    ``w`` (b, m): row counts per resample, columns in rank order; ``y``/``t`` either (m,)
    (same order for every resample) or (b, m); ``ends``: columns closing a tie group
    (None: every column).
    """
    n = np.cumsum(w, axis=1)
    nt = np.cumsum(w * t, axis=1)
    yt = np.cumsum(w * (y * t), axis=1)
    yc = np.cumsum(w * (y * (1.0 - t)), axis=1)
    if ends is not None:
        n, nt, yt, yc = n[:, ends], nt[:, ends], yt[:, ends], yc[:, ends]
    nc = n - nt
    zero = np.zeros((w.shape[0], 1))
    x = np.hstack([zero, n])
    q = np.hstack([zero, yt - yc * _div(nt, nc)])
    u = np.hstack([zero, (_div(yt, nt) - _div(yc, nc)) * n])
    return _trapz_rows(x, q), _trapz_rows(x, u), x[:, -1], q[:, -1], u[:, -1]


def _order_and_ends(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The project's ranking (stable ascending sort reversed) and its tie-group ends."""
    order = np.argsort(score, kind="stable")[::-1]
    s = score[order]
    return order, np.append(np.flatnonzero(np.diff(s) != 0), s.size - 1)


def bootstrap_cell(y, t, scores: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Normalized QINI and AUUC of each ranking on each resample ``idx`` (b, m) of the rows.

    ``scores`` holds fixed rankings; ``random`` is added as the resample's own (random)
    order. The perfect curves (normalization) are those of
    :func:`fulcrum.metrics.curves.perfect_qini_curve` (negative_effect=True) and
    :func:`~fulcrum.metrics.curves.perfect_uplift_curve` for non-binary responses.
    """
    b, m = idx.shape
    counts = np.bincount((idx + m * np.arange(b)[:, None]).ravel(), minlength=b * m).reshape(b, m).astype(np.float64)
    p_order, p_ends = _order_and_ends(y * (2.0 * t - 1.0))
    pq_area, pu_area, x_end, q_end, u_end = _areas(counts[:, p_order], y[p_order], t[p_order], p_ends)
    rq = x_end * q_end / 2.0  # random line from (0, 0) to the end of the curve
    ru = x_end * u_end / 2.0
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, s in scores.items():
        order, ends = _order_and_ends(s)
        qa, ua, *_ = _areas(counts[:, order], y[order], t[order], ends)
        out[name] = {"qini": (qa - rq) / (pq_area - rq), "auuc": (ua - ru) / (pu_area - ru)}
    qa, ua, *_ = _areas(np.ones((b, m)), y[idx], t[idx], None)
    out["random"] = {"qini": (qa - rq) / (pq_area - rq), "auuc": (ua - ru) / (pu_area - ru)}
    return out


def check_vectorized(y, t, scores: dict[str, np.ndarray], rng: np.random.Generator) -> float:
    """Largest gap between the vectorized scores and fulcrum.metrics on the full sample and one resample."""
    from fulcrum.metrics.scores import qini_auc_score, uplift_auc_score

    m = y.size
    worst = 0.0
    full = np.arange(m)[None, :]
    got = bootstrap_cell(y, t, scores, full)
    for name, s in scores.items():
        worst = max(worst, abs(got[name]["qini"][0] - qini_auc_score(y, s, t)),
                    abs(got[name]["auuc"][0] - uplift_auc_score(y, s, t)))
    idx = rng.integers(0, m, size=(1, m))
    got = bootstrap_cell(y, t, scores, idx)
    i = idx[0]
    for name, s in scores.items():
        worst = max(worst, abs(got[name]["qini"][0] - qini_auc_score(y[i], s[i], t[i])),
                    abs(got[name]["auuc"][0] - uplift_auc_score(y[i], s[i], t[i])))
    rank = -np.arange(m, dtype=np.float64)  # the resample's own order
    worst = max(worst, abs(got["random"]["qini"][0] - qini_auc_score(y[i], rank, t[i])),
                abs(got["random"]["auuc"][0] - uplift_auc_score(y[i], rank, t[i])))
    return worst


# --------------------------------------------------------------------------- one run


def _summary(v: np.ndarray) -> dict:
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)),
            "q025": float(np.quantile(v, 0.025)), "q975": float(np.quantile(v, 0.975))}


def _users_needed(m: float, gap: float, sd: float, test_per_row: float, users_per_row: float) -> dict:
    """Rows for gap = Z_TARGET std, the std measured on m cell rows scaling as 1/√n.

    Returns the cell rows (control + arm k), the test users and the simulated users
    (at the default split and arm shares) that many cell rows correspond to.
    """
    if not gap > 0 or not sd > 0:
        return {"cell_rows": math.inf, "test_users": math.inf, "users": math.inf}
    rows = m * (Z_TARGET * sd / gap) ** 2
    return {"cell_rows": float(rows), "test_users": float(rows * test_per_row), "users": float(rows * users_per_row)}


def expected_qini(score: np.ndarray, tau: np.ndarray, perfect_gain: float, p_treated: float) -> float:
    """Noise-free observed QINI of a ranking: p_T × (true gain area above random) / observed perfect gain.

    For a ranking independent of the assignment, E[Q(n)] = E[Y_T − Y_C N_T/N_C] ≈ p_T Σ_top n τ,
    so the expected numerator is p_T times the true curve's area above its random line
    (row-count units); the denominator, the sample's perfect Qini area above random, is
    dominated by the spread of y and barely varies between resamples.
    """
    from fulcrum.metrics.truth import true_qini_curve

    x, g = true_qini_curve(score, np.zeros_like(tau), tau)
    area = float(np.sum(np.diff(x) * (g[1:] + g[:-1]) / 2.0)) - x[-1] * g[-1] / 2.0
    return p_treated * area / perfect_gain


def analyse(data: dict, n_users: int, n_boot: int, chunk: int, rng: np.random.Generator) -> dict:
    from fulcrum.metrics.curves import _is_binary, _unit_labels, perfect_qini_curve
    from fulcrum.metrics.scores import qini_auc_score, rank_correlation, uplift_auc_score
    from fulcrum.metrics.truth import true_qini

    y_all, arm, mu = data["y"], data["arm"], data["mu"]
    n_test = arm.size
    cells = {}
    worst = 0.0
    for k, treat in enumerate(data["arms"][1:], start=1):
        rows = (arm == 0) | (arm == k)
        t = (arm[rows] == k).astype(np.float64)
        m = int(rows.sum())
        per_user = n_users / m  # simulated users per cell row
        for r, resp in enumerate(data["responses"]):
            y = y_all[rows, r]
            if _is_binary(_unit_labels(y)[0]):
                raise SystemExit(f"{treat}/{resp}: binary responses are not handled by the vectorized bootstrap")
            mu0, mu1 = mu[rows, 0, r], mu[rows, k, r]
            tau, delta = mu1 - mu0, mu1 / mu0 - 1.0
            fixed = {"oracle_rel": delta, "oracle_abs": tau}
            xp, vp = perfect_qini_curve(y, t)
            perfect_gain = float(np.sum(np.diff(xp) * (vp[1:] + vp[:-1]) / 2.0)) - xp[-1] * vp[-1] / 2.0
            p_treated = float(t.mean())
            worst = max(worst, check_vectorized(y, t, fixed, rng))
            boot: dict[str, dict[str, list]] = {n: {"qini": [], "auuc": []} for n in RANKINGS}
            done = 0
            while done < n_boot:
                b = min(chunk, n_boot - done)
                got = bootstrap_cell(y, t, fixed, rng.integers(0, m, size=(b, m)))
                for name in RANKINGS:
                    for metric in ("qini", "auuc"):
                        boot[name][metric].append(got[name][metric])
                done += b
            boot_arr = {n: {mt: np.concatenate(v) for mt, v in d.items()} for n, d in boot.items()}
            # the evaluate stage's random ranking (one fixed draw) for the point estimate
            rnd = np.random.default_rng(int(rng.integers(2**31))).random(m)
            point = {"random": rnd, **fixed}
            perms = [np.random.default_rng(int(rng.integers(2**31))).random(m) for _ in range(20)]
            rand_true = np.array([true_qini(p, mu0, mu1) for p in perms])
            rand_true_rel = np.array([true_qini(p, np.zeros(m), delta) for p in perms])
            cell = {
                "treatment": treat, "response": resp, "cell_rows": m, "n_test": n_test,
                "spearman_delta_tau": rank_correlation(delta, tau),
                "rankings": {},
                "paired": {},
            }
            for name in RANKINGS:
                s = point[name]
                cell["rankings"][name] = {
                    "qini_point": qini_auc_score(y, s, t),
                    "auuc_point": uplift_auc_score(y, s, t),
                    "qini": _summary(boot_arr[name]["qini"]),
                    "auuc": _summary(boot_arr[name]["auuc"]),
                    "qini_expected": (0.0 if name == "random" else expected_qini(s, tau, perfect_gain, p_treated)),
                    "true_qini": (float(rand_true.mean()) if name == "random" else true_qini(s, mu0, mu1)),
                    "true_qini_rel": (float(rand_true_rel.mean()) if name == "random"
                                      else true_qini(s, np.zeros(m), delta)),
                }
            cell["rankings"]["random"]["true_qini_std"] = float(rand_true.std(ddof=1))
            for name in ORACLES:
                paired = {}
                for metric in ("qini", "auuc"):
                    diff = boot_arr[name][metric] - boot_arr["random"][metric]
                    gap, sd = float(diff.mean()), float(diff.std(ddof=1))
                    sd_unpaired = math.hypot(boot_arr[name][metric].std(ddof=1), boot_arr["random"][metric].std(ddof=1))
                    paired[metric] = {
                        "p_beats_random": float(np.mean(diff > 0)),
                        "diff": _summary(diff),
                        "z": gap / sd if sd > 0 else math.nan,
                        "sd_unpaired": sd_unpaired,
                    }
                q_exp = cell["rankings"][name]["qini_expected"]
                sd = paired["qini"]["diff"]["std"]
                paired["qini"]["z_expected"] = q_exp / sd if sd > 0 else math.nan
                paired["qini"]["needed"] = _users_needed(m, q_exp, sd, n_test / m, per_user)
                paired["qini"]["needed_unpaired"] = _users_needed(m, q_exp, paired["qini"]["sd_unpaired"],
                                                                  n_test / m, per_user)
                cell["paired"][name] = paired
            cells[f"{treat}__{resp}"] = cell
    return {"cells": cells, "n_test": n_test, "vectorized_max_abs_error": worst}


def run_one(n_users: int, seed: int, args, work: Path, verify: bool) -> dict:
    from pipelines.collect import run_collect

    overrides = {"seed": seed, "source.seed": seed, "source.n_users": n_users}
    if args.split:
        overrides["train.split"] = list(args.split)
    cfg = load_config(REPO / "params.yaml", overrides)
    root = work / f"u{n_users}_s{seed}"
    t0 = time.perf_counter()
    run_collect(cfg, root)
    t_sim = time.perf_counter() - t0
    data = load_test(cfg, root)
    t_load = time.perf_counter() - t0 - t_sim
    if verify:
        verify_against_prepare(cfg, root, data)
    rng = np.random.default_rng([seed, n_users, args.bootstrap])
    t1 = time.perf_counter()
    res = analyse(data, n_users, args.bootstrap, args.chunk, rng)
    res.update(n_users=n_users, seed=seed, split=list(cfg.train.split), single_arm_share=data["n_single"] / n_users,
               seconds={"simulate": round(t_sim, 1), "load": round(t_load, 1),
                                                    "bootstrap": round(time.perf_counter() - t1, 1)})
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- aggregation and text


def aggregate(runs: list[dict]) -> dict:
    """Per n_users and cell: seed-averaged numbers (and the spread of the point estimates over seeds)."""
    out: dict[str, dict] = {}
    for n_users in sorted({r["n_users"] for r in runs}):
        group = [r for r in runs if r["n_users"] == n_users]
        cells = {}
        for key in group[0]["cells"]:
            cs = [r["cells"][key] for r in group]
            agg: dict = {"seeds": [r["seed"] for r in group], "cell_rows": float(np.mean([c["cell_rows"] for c in cs])),
                         "spearman_delta_tau": float(np.mean([c["spearman_delta_tau"] for c in cs]))}
            for name in RANKINGS:
                rk = [c["rankings"][name] for c in cs]
                agg[name] = {
                    "qini_mean": float(np.mean([x["qini"]["mean"] for x in rk])),
                    "qini_boot_std": float(np.mean([x["qini"]["std"] for x in rk])),
                    "qini_point_mean": float(np.mean([x["qini_point"] for x in rk])),
                    "qini_point_std_over_seeds": float(np.std([x["qini_point"] for x in rk], ddof=1)) if len(rk) > 1 else None,
                    "auuc_mean": float(np.mean([x["auuc"]["mean"] for x in rk])),
                    "auuc_boot_std": float(np.mean([x["auuc"]["std"] for x in rk])),
                    "qini_expected": float(np.mean([x["qini_expected"] for x in rk])),
                    "true_qini": float(np.mean([x["true_qini"] for x in rk])),
                    "true_qini_rel": float(np.mean([x["true_qini_rel"] for x in rk])),
                }
            n_test = float(np.mean([r["n_test"] for r in group]))
            for name in ORACLES:
                pr = [c["paired"][name]["qini"] for c in cs]
                gap = float(np.mean([p["diff"]["mean"] for p in pr]))
                sd = float(np.mean([p["diff"]["std"] for p in pr]))
                sd_unpaired = float(np.mean([p["sd_unpaired"] for p in pr]))
                q_exp = agg[name]["qini_expected"]
                rows = agg["cell_rows"]
                agg[f"{name}_vs_random"] = {
                    "p_beats_random": float(np.mean([p["p_beats_random"] for p in pr])),
                    "gap": gap, "sd_paired": sd, "z": gap / sd if sd > 0 else math.nan,
                    "z_expected": q_exp / sd if sd > 0 else math.nan,
                    "needed": _users_needed(rows, q_exp, sd, n_test / rows, n_users / rows),
                    "needed_unpaired": _users_needed(rows, q_exp, sd_unpaired, n_test / rows, n_users / rows),
                    "needed_measured_gap": _users_needed(rows, gap, sd, n_test / rows, n_users / rows),
                    "auuc_p_beats_random": float(np.mean([c["paired"][name]["auuc"]["p_beats_random"] for c in cs])),
                    "auuc_z": float(np.mean([c["paired"][name]["auuc"]["z"] for c in cs])),
                }
            cells[key] = agg
        out[str(n_users)] = {"n_test": float(np.mean([r["n_test"] for r in group])), "split": group[0]["split"],
                             "single_arm_share": float(np.mean([r["single_arm_share"] for r in group])),
                             "cells": cells}
    return out


def _fmt_n(v: float) -> str:
    if not math.isfinite(v):
        return "never"
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def tables(agg: dict) -> list[str]:
    lines = []
    for n_users, block in agg.items():
        first = next(iter(block["cells"].values()))
        lines += ["", f"== {int(n_users):,} users, split {block['split']} ({block['n_test']:,.0f} test users; simulator seeds "
                  f"{first['seeds']}; observed QINI, bootstrap mean ± std, seed-averaged) =="]
        lines.append(f"{'cell':20s} {'rows':>7s} | {'random':>15s} {'oracle δ (rel)':>15s} {'oracle τ (abs)':>15s} | "
                     f"{'E[Q] δ':>6s} {'E[Q] τ':>6s} | {'P(δ>rnd)':>8s} {'z δ':>5s} {'P(τ>rnd)':>8s} {'z τ':>5s} "
                     f"{'zE τ':>5s} | {'trueQ δ':>7s} {'trueQrel τ':>10s} {'ρ(δ,τ)':>6s}")
        for key, c in block["cells"].items():
            q = {n: f"{c[n]['qini_mean']:+.4f}±{c[n]['qini_boot_std']:.4f}" for n in RANKINGS}
            rel, ab = c["oracle_rel_vs_random"], c["oracle_abs_vs_random"]
            lines.append(f"{key:20s} {c['cell_rows']:7,.0f} | {q['random']:>15s} {q['oracle_rel']:>15s} {q['oracle_abs']:>15s} | "
                         f"{c['oracle_rel']['qini_expected']:6.4f} {c['oracle_abs']['qini_expected']:6.4f} | "
                         f"{rel['p_beats_random']:8.3f} {rel['z']:5.1f} {ab['p_beats_random']:8.3f} {ab['z']:5.1f} "
                         f"{ab['z_expected']:5.1f} | {c['oracle_rel']['true_qini']:7.3f} "
                         f"{c['oracle_abs']['true_qini_rel']:10.3f} {c['spearman_delta_tau']:6.2f}")
        if first["oracle_abs"]["qini_point_std_over_seeds"] is not None:
            lines.append("  point estimate on the whole test set, mean ± std over seeds: " + "; ".join(
                f"{key} δ {c['oracle_rel']['qini_point_mean']:+.4f}±{c['oracle_rel']['qini_point_std_over_seeds']:.4f}"
                f" τ {c['oracle_abs']['qini_point_mean']:+.4f}±{c['oracle_abs']['qini_point_std_over_seeds']:.4f}"
                for key, c in block["cells"].items()))
        lines.append("  AUUC (bootstrap mean ± std):")
        for key, c in block["cells"].items():
            a = {n: f"{c[n]['auuc_mean']:+.4f}±{c[n]['auuc_boot_std']:.4f}" for n in RANKINGS}
            lines.append(f"  {key:20s} random {a['random']}  oracle δ {a['oracle_rel']}  oracle τ {a['oracle_abs']}  "
                         f"P(δ>rnd) {c['oracle_rel_vs_random']['auuc_p_beats_random']:.3f}  "
                         f"P(τ>rnd) {c['oracle_abs_vs_random']['auuc_p_beats_random']:.3f}")
        lines.append("  needed for E[oracle QINI] − random ≥ 3 paired bootstrap std (std ∝ 1/√n): "
                     "simulated users / test users (unpaired: simulated users)")
        for key, c in block["cells"].items():
            parts = []
            for name, label in (("oracle_rel", "oracle δ"), ("oracle_abs", "oracle τ")):
                d = c[f"{name}_vs_random"]
                parts.append(f"{label}: {_fmt_n(d['needed']['users']):>6s} / {_fmt_n(d['needed']['test_users']):>6s} "
                             f"(unpaired {_fmt_n(d['needed_unpaired']['users'])})")
            lines.append(f"  {key:20s} " + "   ".join(parts))
    return lines


def recommendation(agg: dict) -> list[str]:
    largest = max(agg, key=int)
    cells = agg[largest]["cells"]
    need = {name: max(c[f"{name}_vs_random"]["needed"]["users"] for c in cells.values()) for name in ORACLES}
    need_test = {name: max(c[f"{name}_vs_random"]["needed"]["test_users"] for c in cells.values()) for name in ORACLES}
    need_unp = max(c["oracle_abs_vs_random"]["needed_unpaired"]["users"] for c in cells.values())
    lines = ["", "== Recommended protocol (from the numbers above) =="]
    for n_users, block in agg.items():
        cs = block["cells"].values()
        z_abs = min(c["oracle_abs_vs_random"]["z_expected"] for c in cs)
        z_rel = min(c["oracle_rel_vs_random"]["z_expected"] for c in cs)
        p_abs = min(c["oracle_abs_vs_random"]["p_beats_random"] for c in cs)
        ok = "clears" if z_abs >= Z_TARGET else "does not clear"
        lines.append(f"- {int(n_users):,} users: worst cell, E[oracle − random] / paired std: τ oracle {z_abs:.1f}, "
                     f"δ oracle {z_rel:.1f}; worst P(τ oracle > random) {p_abs:.3f}: {ok} 3 std in every cell.")
    # keep the default train and validation sizes, give the rest of the simulated users to test
    n_default = 200_000
    fit_users = n_default * (1.0 - DEFAULT_SPLIT[2])
    single = agg[largest]["single_arm_share"]
    min_users = fit_users + need_test["oracle_abs"] / single
    lines += [
        f"- 3 paired std in every cell needs about {_fmt_n(need['oracle_abs'])} simulated users at split "
        f"{agg[largest]['split']} "
        f"({_fmt_n(need_test['oracle_abs'])} test users) for the τ oracle, {_fmt_n(need['oracle_rel'])} "
        f"({_fmt_n(need_test['oracle_rel'])}) for the δ oracle; unpaired, {_fmt_n(need_unp)} for the τ oracle "
        f"(std from the {int(largest):,}-user runs).",
        f"- The test set need not be 15 % of the users: keeping train/valid at the default {fit_users / 1e3:.0f}k users "
        f"and giving the rest to test, 3 std in every cell needs ≈ {_fmt_n(min_users)} simulated users; with margin:",
        "  `--set source.n_users=1000000 --set 'train.split=[0.14, 0.03, 0.83]'` (140k train, 30k valid, 830k test; "
        "verify with --split 0.14 0.03 0.83).",
        "- Lead with the truth metrics (ρ and PEHE on δ, true QINI on τ = mu_k − mu_0, true policy value):",
        "  deterministic given the test users, no resampling noise from the responses.",
        "- Observed QINI/AUUC: a supporting metric with a paired bootstrap interval (model − random and",
        "  model − model on the same resamples), on a test set at least the size above; below it, a",
        "  QINI ranking of models is not evidence.",
        "- QINI/AUUC reward the absolute uplift ŷ_k − ŷ_0: score them on that ranking; ρ/PEHE on the",
        "  published relative δ; report both rankings' QINI (true and observed).",
    ]
    return lines


def _compact_run(run: dict) -> dict:
    """A run's per-cell numbers without what the summary already derives (keeps the JSON small)."""
    cells = {}
    for key, c in run["cells"].items():
        cells[key] = {
            "cell_rows": c["cell_rows"], "spearman_delta_tau": c["spearman_delta_tau"],
            "rankings": {name: {"qini_point": rk["qini_point"], "qini_expected": rk["qini_expected"],
                                "qini": rk["qini"], "auuc": {m: rk["auuc"][m] for m in ("mean", "std")},
                                "true_qini": rk["true_qini"], "true_qini_rel": rk["true_qini_rel"]}
                         for name, rk in c["rankings"].items()},
            "paired": {name: {"qini_p": p["qini"]["p_beats_random"], "qini_diff_mean": p["qini"]["diff"]["mean"],
                              "qini_diff_std": p["qini"]["diff"]["std"], "auuc_p": p["auuc"]["p_beats_random"]}
                       for name, p in c["paired"].items()},
        }
    keep = ("n_users", "seed", "split", "n_test", "single_arm_share", "seconds", "vectorized_max_abs_error")
    return {**{k: run[k] for k in keep}, "cells": cells}


def _finite(obj):
    """JSON-safe, rounded copy: inf / NaN become null (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(f"{obj:.4g}") if math.isfinite(obj) else None  # 4 significant digits keep the file small
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", nargs="+", default=["200000:7,8,9", "1000000:7"],
                    help="runs as N_USERS:SEED[,SEED...] (default: 200000:7,8,9 1000000:7)")
    ap.add_argument("--bootstrap", type=int, default=200, help="resamples of test users per cell (default 200)")
    ap.add_argument("--chunk", type=int, default=20, help="resamples computed at once (memory: ~chunk × rows × 8 B × 6)")
    ap.add_argument("--out", type=Path, default=Path("reports/noise_floor.json"))
    ap.add_argument("--text", type=Path, default=None, help="also write the printed tables here")
    ap.add_argument("--split", type=float, nargs=3, default=None, metavar=("TRAIN", "VALID", "TEST"),
                    help="override train.split (default: params.yaml's), e.g. 0.14 0.03 0.83 for a large test set")
    ap.add_argument("--verify", action="store_true", help="check the test rows against prepare() on the first run")
    args = ap.parse_args()
    if args.split and abs(sum(args.split) - 1.0) > 1e-9:
        ap.error(f"--split must sum to 1, got {args.split}")
    plan = []
    for item in args.plan:
        users, _, seeds = item.partition(":")
        if not seeds:
            ap.error(f"--plan entries are N_USERS:SEED[,SEED...], got {item!r}")
        plan += [(int(users), int(s)) for s in seeds.split(",")]
    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    runs, progress = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (n_users, seed) in enumerate(plan):
            res = run_one(n_users, seed, args, Path(tmp), verify=args.verify and i == 0)
            runs.append(res)
            sec = res["seconds"]
            progress.append(f"{n_users:,} users seed {seed}: {res['n_test']:,} test users; simulate "
                            f"{sec['simulate']:.0f} s, load {sec['load']:.0f} s, bootstrap {sec['bootstrap']:.0f} s "
                            f"(vectorized vs fulcrum.metrics max |Δ| {res['vectorized_max_abs_error']:.1e}; "
                            f"{time.perf_counter() - t0:.0f} s total)")
            print(progress[-1], flush=True)
    agg = aggregate(runs)
    lines = [f"Noise floor of test QINI: {args.bootstrap} bootstrap resamples of test users per cell; "
             "random = a fresh random order per resample; oracle δ = true mu_k/mu_0 − 1, oracle τ = true mu_k − mu_0.",
             "z = mean(oracle − random) / std(oracle − random) over paired resamples; trueQ δ = true QINI (on Σ τ) of "
             "the δ ranking (τ ranking = 1, random ≈ 0); ρ(δ,τ) = Spearman of δ and τ."]
    lines += tables(agg) + recommendation(agg)
    print("\n".join(lines))
    text = "\n".join(progress + lines)  # the file also keeps the per-run timings
    payload = {"bootstrap": args.bootstrap, "plan": args.plan, "split": args.split, "z_target": Z_TARGET, "summary": agg, "runs": [_compact_run(r) for r in runs],
               "seconds_total": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = _finite(payload)
    runs_text = ",\n".join(json.dumps(r, allow_nan=False, separators=(",", ":")) for r in payload.pop("runs"))
    head = json.dumps(payload, indent=1, allow_nan=False)  # the summary readable, one line per run
    args.out.write_text(head[:-2] + ',\n "runs": [\n' + runs_text + "\n ]\n}\n")
    if args.text:
        args.text.parent.mkdir(parents=True, exist_ok=True)
        args.text.write_text(text + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
