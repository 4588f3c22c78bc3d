"""Stage ``policy``: do the decisions pay? Offline policy evaluation, σ calibration, the frontier, the gate.

On users the model never trained on: under the holdout protocol the user split of
``train.split`` (validation users calibrate, test users value); cross-fitted
(``evaluate.protocol``), every user carries an out-of-fold δ, so a hash share
(``policy.calibration_share``) calibrates and all the other users value:

1. **Calibrate σ** on the validation users (:mod:`models.calibration`): the declared
   objective Σ_r λ_r·relative lift_r under guard-rails (and a budget), for HMUM and,
   to compare like with like, for the fixed-weight policy.
2. **Evaluate** every built-in policy (:mod:`models.policy`) on the test users with IPS,
   self-normalized IPS and doubly robust estimators and paired bootstrap intervals
   (:mod:`fulcrum.ope`); on simulated data the true values from the truth tables too.
3. **The trade-off frontier**: σ swept for HMUM (and the oracle), global weights swept
   for the fixed-weight policy, single strategies as points.
4. **The gate**: HMUM at the chosen σ must keep each response's DR lower bound above its
   guard-rail on the test users, or ``deploy`` refuses the release (``policy.force``
   overrides, recorded).

Outputs: ``<data>/policy/policy.json`` (what deploy reads: σ, mode, gate),
``<reports>/policy.{json,md,html}``, ``<reports>/frontier.png`` and
``<reports>/plots/frontier.json`` (DVC plots).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fulcrum import ope
from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from models.calibration import (
    Calibration,
    Constraints,
    RCTLogs,
    calibrate,
    common_sigma_sweep,
    pareto_front,
    weight_sweep,
)
from models.policy import (
    Policy,
    Units,
    arm_lookup,
    combined_outcomes,
    decide_all,
    to_arms,
    treated_share,
)
from pipelines.crossfit import CrossFit, calibration_split
from pipelines.reporting import markdown_table, relative_truth, save_figure, write_html

log = logging.getLogger("fulcrum")
DECISION_FILE = "policy.json"
SPLIT_NAMES = {"valid": 1, "test": 2}
DM_FIT_USERS = 100_000  # training users the direct method's scale is fitted on


# --------------------------------------------------------------------------- inputs


@dataclass
class PolicyData:
    """Everything the policies and estimators need about one user split."""

    user_id: np.ndarray
    units: Units
    logs: RCTLogs
    mu_true: np.ndarray | None  # (n, A, R) over single + combined arms
    cpm_mu: np.ndarray | None = None     # (n, K+1, R) CPM's ŷ (CDUM family)
    interest: np.ndarray | None = None   # (n, K) each user's mean FIC r̂ over their requests (CDUM family)


def user_weights(user_id: np.ndarray, req_user: np.ndarray, req_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, R) each user's mean weight over their requests; the population mean where they have none.

    Also returns the (n,) bool "has requests". The default is the mean over all logged
    requests: what the platform knows of a user it has no request context for. With no
    request users at all, ``req_weights`` (1, R) is everyone's weight (fixed weights).
    """
    if len(req_weights) == 0:
        raise ValueError("no request logs: DDM weights (and so HMUM decisions) need requests.parquet")
    if len(req_user) == 0:
        return np.repeat(req_weights[:1], len(user_id), axis=0), np.zeros(len(user_id), bool)
    users, inv = np.unique(req_user, return_inverse=True)
    sums = np.zeros((len(users), req_weights.shape[1]))
    np.add.at(sums, inv, req_weights)
    means = sums / np.bincount(inv, minlength=len(users))[:, None]
    pos = np.clip(np.searchsorted(users, user_id), 0, len(users) - 1)
    has = users[pos] == user_id
    out = np.where(has[:, None], means[pos], req_weights.mean(0)[None, :])
    return out, has


def _request_weights(cfg: FulcrumConfig, root: Path, man: S.Manifest) -> tuple[np.ndarray, np.ndarray]:
    """DDM weights of every logged request: (request user ids, (N, R) weights)."""
    from models.ddm_io import CHECKPOINT as DDM_CHECKPOINT
    from models.ddm_io import arrays_from_table, load_ddm, read_request_table
    from pipelines.train_ddm import predict_o_hat

    ddm = load_ddm(cfg.paths.ddm_dir(root) / DDM_CHECKPOINT)
    if list(ddm.meta["responses"]) != man.responses:
        raise StageError(f"DDM {ddm.version} was trained for {ddm.meta['responses']}, the data has {man.responses}")
    table = read_request_table(cfg.paths.rct_dir(root), man.responses)
    o_hat = predict_o_hat(ddm.net, arrays_from_table(table, man.responses, ddm.max_items))
    return table.column(S.USER_ID).to_numpy(), o_hat / o_hat.sum(1, keepdims=True)


def _request_interest(cfg: FulcrumConfig, root: Path, man: S.Manifest) -> tuple[np.ndarray, np.ndarray, str]:
    """FIC's r̂ for every logged request: (request user ids, (N, K) r̂, FIC version)."""
    from models.ddm_io import arrays_from_table, read_request_table
    from models.ddm_numpy import load_serving_ddm
    from pipelines.train_fic import FIC_FILE

    path = cfg.paths.fic_dir(root) / FIC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: families has cdum, run train_fic first (fulcrum train-fic)")
    fic = load_serving_ddm(path)
    table = read_request_table(cfg.paths.rct_dir(root), man.responses)
    arrays = arrays_from_table(table, man.responses, fic.max_items)
    r_hat = fic.fast.outputs(arrays.duration, arrays.category, arrays.scores, arrays.mask)  # (N, K)
    return table.column(S.USER_ID).to_numpy(), r_hat.astype(np.float64), fic.version


def _true_request_mix(rct: Path, man: S.Manifest) -> tuple[np.ndarray, np.ndarray] | None:
    if not (rct / S.REQUESTS_TRUTH_FILE).exists():
        return None
    req = pq.read_table(rct / S.REQUESTS_FILE, columns=[S.REQUEST_ID, S.USER_ID]).to_pandas()
    mix = pq.read_table(rct / S.REQUESTS_TRUTH_FILE).to_pandas()
    joined = req.merge(mix, on=S.REQUEST_ID, how="inner", validate="one_to_one")
    return joined[S.USER_ID].to_numpy(), joined[[S.mix_column(r) for r in man.responses]].to_numpy(np.float64)


def _out_of_fold(model_dir: Path, protocol: str) -> CrossFit | None:
    """The cross-fitted model's out-of-fold ŷ (None under holdout)."""
    return CrossFit.from_dir(model_dir) if protocol == "cross_fit" else None


def load_policy_data(cfg: FulcrumConfig, root: Path) -> tuple[S.Manifest, dict, dict[str, PolicyData]]:
    """The validation and test users with model δ and μ̂, DDM weights, logs and (simulated) truth."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.train import predict_mu
    from pipelines.train import CHECKPOINT
    from pipelines.training_set import build_training_frame, split_users, stored_frame

    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    combined = list(man.combined_arms)
    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT)
    if ck.meta["arms"] != man.arms or ck.meta["responses"] != man.responses:
        raise StageError(f"model {ck.version} was trained for arms {ck.meta['arms']} / responses "
                         f"{ck.meta['responses']}, data has {man.arms} / {man.responses}")
    frame = stored_frame(cfg, root)
    if frame is None:
        frame = build_training_frame(rct, man, cfg=cfg, root=root)
    exp = pq.read_table(rct / S.EXPERIMENT_FILE, columns=[S.USER_ID, S.ARM_INDEX, S.PROPENSITY]).to_pandas()
    frame = frame.drop(columns=[S.ARM_INDEX], errors="ignore").merge(exp, on=S.USER_ID, how="left",
                                                                     validate="one_to_one")
    protocol = ck.meta.get("protocol", "holdout")
    if protocol == "cross_fit":  # every user has an out-of-fold δ: calibrate on a share, value on the rest
        split = calibration_split(frame[S.USER_ID].to_numpy(), cfg.policy.calibration_share, ck.meta["seed"])
    else:
        split = split_users(frame[S.USER_ID].to_numpy(), tuple(cfg.train.split), ck.meta["seed"])
    hum_oof = _out_of_fold(cfg.paths.model_dir(root), protocol)
    weight_source = cfg.decision.weight_source(man.has_requests)
    if weight_source == "ddm":
        req_user, req_w = _request_weights(cfg, root, man)
    else:  # fixed weights (decision.weights, or equal without request logs): every user the same w
        fixed = np.asarray(cfg.decision.fixed_weights(list(man.responses)))
        req_user, req_w = np.empty(0, np.int64), fixed[None, :]
    mix = _true_request_mix(rct, man) if man.has_truth else None
    all_arms = [*man.arms, *combined]
    truth = None
    if man.has_truth:
        cols = [S.truth_column(a, r) for a in all_arms for r in man.responses]
        truth = pq.read_table(rct / S.TRUTH_FILE, columns=[S.USER_ID, *cols]).to_pandas().set_index(S.USER_ID)

    def outcomes(df: pd.DataFrame, model=ck, oof: CrossFit | None = hum_oof) -> np.ndarray:
        """(n, K+1, R) HUM's (or ``model``'s) expected outcomes in response units.

        Cross-fitted: every user's out-of-fold ŷ (mean over the fold assignments), combined-arm
        users' too (from their own fold's model), so μ̂ never depends on the logged arm: the
        doubly robust estimator is unbiased only then.
        """
        if oof is None:
            return predict_mu(model.net, torch.from_numpy(model.encoder.transform(df)), model.target).astype(np.float64)
        mu, found = oof.lookup(df[S.USER_ID].to_numpy(np.int64))
        if not found.all():
            raise StageError(f"{int((~found).sum()):,} users have no out-of-fold prediction: the cross-fitted model "
                             "is from other data; rerun fulcrum train")
        return mu

    cpm = None
    if cfg.cdum_on:  # CDUM: CPM's ŷ and FIC's r̂ for the same users
        from pipelines.score import check_fits

        cpm_file = cfg.paths.cpm_dir(root) / CHECKPOINT
        if not cpm_file.exists():
            raise FileNotFoundError(f"{cpm_file} not found: families has cdum, run train_cpm first (fulcrum train-cpm)")
        cpm = load_checkpoint(cpm_file)
        check_fits(cpm, man)
        if cpm.meta.get("protocol", "holdout") != protocol:
            raise StageError(f"CPM {cpm.version} was fitted under the {cpm.meta.get('protocol', 'holdout')} protocol, "
                             f"HUM {ck.version} under {protocol}: rerun train_cpm (fulcrum train-cpm)")
        cpm_oof = _out_of_fold(cfg.paths.cpm_dir(root), protocol)
        fic_user, fic_r, fic_version = _request_interest(cfg, root, man)

    # DR's direct part: HUM's μ̂ rescaled per arm and response on training users (at most
    # DM_FIT_USERS of them; cross-fitted: the calibration users), never on the users the
    # estimates are computed on.
    train_rows = np.flatnonzero(split == (SPLIT_NAMES["valid"] if protocol == "cross_fit" else 0))
    fit = frame.iloc[np.random.default_rng(cfg.seed).permutation(train_rows)[:DM_FIT_USERS]]
    scale = ope.outcome_scale(combined_outcomes(outcomes(fit), man.treatments, combined),
                              fit[S.ARM_INDEX].to_numpy(np.int64), fit[man.responses].to_numpy(np.float64))
    out = {}
    for part, code in SPLIT_NAMES.items():
        df = frame.loc[split == code]
        uid = df[S.USER_ID].to_numpy(np.int64)
        mu = outcomes(df)
        delta = relative_truth(mu)  # δ = ŷ_k / ŷ_0 − 1, what score publishes
        weights, _ = user_weights(uid, req_user, req_w)
        true_delta = true_weights = mu_true = None
        if truth is not None:
            mu_true = truth.loc[uid, cols].to_numpy(np.float64).reshape(len(uid), len(all_arms), -1)
            true_delta = relative_truth(mu_true[:, : len(man.arms)])
            if mix is not None:
                true_weights, _ = user_weights(uid, *mix)
            elif weight_source == "fixed":  # no request truth: the oracle weighs the true δ as the decision does
                true_weights = weights
        units = Units(delta=delta, weights=weights, treatments=man.treatments, responses=man.responses,
                      true_delta=true_delta, true_weights=true_weights)
        logs = RCTLogs(arm=df[S.ARM_INDEX].to_numpy(np.int64), y=df[man.responses].to_numpy(np.float64),
                       propensity=df[S.PROPENSITY].to_numpy(np.float64),
                       mu_hat=combined_outcomes(mu, man.treatments, combined) * scale[None])
        out[part] = PolicyData(uid, units, logs, mu_true)
        if cpm is not None:
            out[part].cpm_mu = outcomes(df, cpm, cpm_oof)
            out[part].interest, _ = user_weights(uid, fic_user, fic_r)  # the user's mean r̂ (population mean if none)
    meta = {"hum_version": ck.version, "model": ck.meta["model"], "protocol": protocol,
            "combined_arms": combined, "all_arms": all_arms,
            "dm_scale": dict(zip(all_arms, scale.round(4).tolist(), strict=True)),
            "requests_users_share": float(np.isin(out["test"].user_id, req_user).mean()),
            "weight_source": weight_source, "fixed_weights": None if weight_source == "ddm" else
            dict(zip(man.responses, req_w[0].tolist(), strict=True))}
    if cpm is not None:
        # CDUM's response scale s_r: CPM's mean ŷ^0 on the training users it was fitted on, fixed in the release.
        meta.update(cpm_version=cpm.version, fic_version=fic_version,
                    cdum_scale=outcomes(fit, cpm, cpm_oof)[:, 0].mean(0).tolist())
    return man, meta, out


def with_cdum_values(data: PolicyData, lam: np.ndarray, scale: np.ndarray) -> PolicyData:
    """``data`` whose units carry CDUM's gain (FIC's r̂) and CPM alone's (r̂ = 1), weighed by λ."""
    from dataclasses import replace

    from models.decision import cdum_value

    mu, r_hat = data.cpm_mu, data.interest
    units = replace(data.units, cdum_value=cdum_value(r_hat, mu[:, 1:], mu[:, 0], lam, scale),
                    cpm_value=cdum_value(np.ones_like(r_hat), mu[:, 1:], mu[:, 0], lam, scale))
    return replace(data, units=units)


# --------------------------------------------------------------------------- policies


def builtin_policies(man: S.Manifest, lam: np.ndarray, hmum_sigma, fixed_sigma, mode: str,
                     has_truth: bool, seed: int, combined: list[str]) -> list[Policy]:
    """The policies of the comparison table, HMUM at the released σ."""
    k = len(man.treatments)
    ps = [Policy("all-control", "control")]
    ps += [Policy(f"all-{t}", "all", treatment=t) for t in [*man.treatments, *combined]]
    ps += [Policy(f"greedy-{r}", "greedy", response=r, mode=mode) for r in man.responses]
    ps.append(Policy("fixed-weight", "fixed_weight", weights=tuple(lam.tolist()), sigma=tuple(fixed_sigma), mode=mode))
    ps.append(Policy("hmum", "hmum", sigma=tuple(hmum_sigma), mode=mode))
    ps.append(Policy("hmum σ=0", "hmum", sigma=(0.0,) * k, mode=mode))
    ps.append(Policy("random", "random", like="hmum", seed=seed))
    if has_truth:
        ps.append(Policy("oracle", "oracle", sigma=(0.0,) * k, mode=mode))
    return ps


def _estimate_table(policies: list[Policy], data: PolicyData, lookup: np.ndarray, lam: np.ndarray,
                    pc, seed: int) -> list[dict]:
    decisions = decide_all(policies, data.units)
    actions = np.stack([to_arms(decisions[p.name], lookup) for p in policies], axis=1)
    est = ope.estimate(actions, data.logs.arm, data.logs.y, data.logs.propensity, mu_hat=data.logs.mu_hat,
                       n_boot=pc.bootstrap, level=pc.level, seed=seed)
    truth = ope.true_values(actions, data.mu_true) if data.mu_true is not None else None
    cov = ope.coverage(actions)
    rows = []
    for j, p in enumerate(policies):
        on = decisions[p.name]
        row = {"policy": p.name, "spec": p.to_dict(), "coverage": float(cov[j]), "treated_share": treated_share(on),
               "arm_shares": {str(a): float(np.mean(actions[:, j] == a)) for a in np.unique(actions[:, j])}}
        for name, e in est.items():
            row[name] = {
                "value": e.value.point[j].tolist(), "value_lo": e.value.lo[j].tolist(), "value_hi": e.value.hi[j].tolist(),
                "rel_lift": e.rel_lift.point[j].tolist(), "rel_lift_lo": e.rel_lift.lo[j].tolist(),
                "rel_lift_hi": e.rel_lift.hi[j].tolist(),
                "objective": float(e.rel_lift.point[j] @ lam),
            }
        if truth is not None:
            value, rel = truth
            row["truth"] = {"value": value[j].tolist(), "rel_lift": rel[j].tolist(), "objective": float(rel[j] @ lam),
                            "interest_weighted_gain": _interest_gain(actions[:, j], data)}
            inside = [bool(est["dr"].value.lo[j, r] <= value[j, r] <= est["dr"].value.hi[j, r])
                      for r in range(value.shape[1])]
            row["dr_covers_truth"] = inside
        rows.append(row)
    return rows


def _interest_gain(actions: np.ndarray, data: PolicyData) -> float | None:
    """Truth only: mean over users of Σ_r m_r·δ_r(π(i)), their true mix times their true relative effect."""
    if data.units.true_weights is None or data.mu_true is None:
        return None
    ok = actions != ope.NOT_EVALUABLE
    rows = np.flatnonzero(ok)
    rel = data.mu_true[rows, actions[rows]] / data.mu_true[rows, 0] - 1  # (m, R)
    return float((rel * data.units.true_weights[rows]).sum(1).mean()) if len(rows) else None


def _frontier(man: S.Manifest, data: PolicyData, lookup: np.ndarray, hmum: Policy, combined: list[str],
              pc, cdum: Policy | None = None) -> list[dict]:
    """Points (relative lift on the first two responses) of σ / ξ / weight sweeps; DR on test users, truth too."""
    pts: list[tuple[str, Policy]] = []
    k = len(man.treatments)
    for family in [hmum] + ([cdum] if cdum is not None else []):
        for s in common_sigma_sweep(family.scores(data.units), pc.frontier_points):
            pts.append((family.name, family.with_sigma([s] * k)))
    for w in weight_sweep(len(man.responses), pc.frontier_points):
        pts.append(("fixed-weight", Policy("fixed-weight", "fixed_weight", weights=tuple(w), sigma=(0.0,) * k,
                                           mode=hmum.mode)))
    for t in [*man.treatments, *combined]:
        pts.append((f"all-{t}", Policy(f"all-{t}", "all", treatment=t)))
    for r in man.responses:
        pts.append((f"greedy-{r}", Policy(f"greedy-{r}", "greedy", response=r, mode=hmum.mode)))
    if data.units.true_delta is not None and data.units.true_weights is not None:
        oracle = Policy("oracle", "oracle", mode=hmum.mode)
        for s in common_sigma_sweep(oracle.scores(data.units), pc.frontier_points):
            pts.append(("oracle", oracle.with_sigma([s] * k)))
    actions = np.stack([np.zeros(data.units.n, np.int64)]
                       + [to_arms(p.decide(data.units), lookup) for _, p in pts], axis=1)
    est = ope.estimate(actions, data.logs.arm, data.logs.y, data.logs.propensity, mu_hat=data.logs.mu_hat,
                       estimators=("dr",), n_boot=0)["dr"]
    truth = ope.true_values(actions, data.mu_true)[1] if data.mu_true is not None else None
    r2 = min(1, len(man.responses) - 1)
    rows = []
    for j, (series, p) in enumerate(pts, start=1):
        row = {"series": series, "sigma": None if p.sigma is None else list(p.sigma),
               "weights": None if p.weights is None else list(p.weights),
               "dr_x": float(est.rel_lift.point[j, 0]), "dr_y": float(est.rel_lift.point[j, r2]),
               "coverage": float(np.mean(actions[:, j] != ope.NOT_EVALUABLE))}
        if truth is not None:
            row["true_x"], row["true_y"] = float(truth[j, 0]), float(truth[j, r2])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the stage


def objective_weights(cfg: FulcrumConfig, man: S.Manifest, units: Units) -> np.ndarray:
    """λ (R,), summing to 1: the configured weights, else the users' mean DDM weights."""
    pc = cfg.policy
    if pc.objective_weights is None:
        lam = units.weights.mean(0)
    else:
        unknown = sorted(set(pc.objective_weights) - set(man.responses))
        if unknown:
            raise StageError(f"policy.objective_weights names unknown responses {unknown}; data has {man.responses}")
        lam = np.array([pc.objective_weights.get(r, 0.0) for r in man.responses], dtype=np.float64)
    return lam / lam.sum()


def gate_check(row: dict, guard: np.ndarray, responses: list[str]) -> tuple[bool, list[str]]:
    """Does a policy's table row keep every response's DR lower bound above its guard-rail?"""
    problems = []
    if row["coverage"] < 1:
        problems.append(f"{1 - row['coverage']:.1%} of test users get a treatment set the RCT never ran")
    for r, name in enumerate(responses):
        lo, point = row["dr"]["rel_lift_lo"][r], row["dr"]["rel_lift"][r]
        if not lo >= -guard[r]:
            problems.append(f"{name}: DR relative lift {point:+.2%}, 95% lower bound {lo:+.2%} < guard-rail "
                            f"−{guard[r]:.2%}")
    return not problems, problems


def run_policy(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from fulcrum.progress import progress

    t0 = time.perf_counter()
    pc = cfg.policy
    man, meta, data = load_policy_data(cfg, root)
    timings = {"load_and_predict": time.perf_counter() - t0}
    valid, test = data["valid"], data["test"]
    lookup = arm_lookup(man.treatments, man.arms, meta["combined_arms"])
    lam = objective_weights(cfg, man, valid.units)
    guard = np.asarray(pc.guardrails_for(man.responses))
    cons = Constraints(objective_weights=lam, guardrails=guard, budget=pc.budget, level=pc.level,
                       gate_margin=pc.gate_margin)
    mode = cfg.decision.mode
    cdum_on = valid.cpm_mu is not None
    templates = [("hmum", Policy("hmum", "hmum", mode=mode)),
                 ("fixed-weight", Policy("fixed-weight", "fixed_weight", weights=tuple(lam), mode=mode))]
    if cdum_on:  # CDUM weighs its responses by the same λ, on the scale of CPM's mean ŷ^0
        cscale = np.asarray(meta["cdum_scale"])
        valid, test = with_cdum_values(valid, lam, cscale), with_cdum_values(test, lam, cscale)
        templates.append(("cdum", Policy("cdum", "cdum", mode=cfg.cdum.mode)))
    with progress("policy: calibrate, evaluate, sweep", 3, "steps") as advance:
        cal: dict[str, Calibration] = {}
        for name, template in templates:
            cal[name] = calibrate(template, valid.units, valid.logs, lookup, cons, max_candidates=pc.max_candidates,
                                  n_boot=pc.bootstrap, seed=cfg.seed)
        advance(1)
        timings["calibrate"] = time.perf_counter() - t0 - sum(timings.values())
        hmum_sigma = cal["hmum"].sigma if pc.calibrate else np.asarray(cfg.decision.sigma_for(man.treatments))
        fixed_sigma = cal["fixed-weight"].sigma if pc.calibrate else hmum_sigma
        policies = builtin_policies(man, lam, hmum_sigma, fixed_sigma, mode, test.mu_true is not None, cfg.seed,
                                    meta["combined_arms"])
        if cdum_on:
            xi = cal["cdum"].sigma if pc.calibrate else np.asarray(cfg.cdum.xi_for(man.treatments))
            zero = (0.0,) * len(man.treatments)
            policies += [Policy("cdum", "cdum", sigma=tuple(xi), mode=cfg.cdum.mode),
                         Policy("cdum ξ=0", "cdum", sigma=zero, mode=cfg.cdum.mode),
                         Policy("cpm alone ξ=0 (r̂=1)", "cpm", sigma=zero, mode=cfg.cdum.mode)]
        table = _estimate_table(policies, test, lookup, lam, pc, cfg.seed + 1)
        advance(1)
        timings["evaluate"] = time.perf_counter() - t0 - sum(timings.values())
        frontier = _frontier(man, test, lookup, Policy("hmum", "hmum", mode=mode), meta["combined_arms"], pc,
                             Policy("cdum", "cdum", mode=cfg.cdum.mode) if cdum_on else None)
        advance(1)
        timings["frontier"] = time.perf_counter() - t0 - sum(timings.values())
    by_name = {r["policy"]: r for r in table}
    passed, problems = gate_check(by_name["hmum"], guard, man.responses)
    sigma_out = _thresholds_out(man.treatments, hmum_sigma)
    decision = {
        "sigma": sigma_out,  # null = never on (σ = +∞)
        "sigma_source": "calibrated" if pc.calibrate else "decision.sigma",
        "mode": mode,
        "gate": {"passed": passed, "problems": problems, "enabled": pc.gate, "forced": bool(pc.force and not passed)},
        "hum_version": meta["hum_version"],
        "weight_source": meta["weight_source"],
        "objective_weights": dict(zip(man.responses, lam.tolist(), strict=True)),
        "guardrails_pct": dict(zip(man.responses, (guard * 100).tolist(), strict=True)),
        "budget": pc.budget,
    }
    if cdum_on:
        c_passed, c_problems = gate_check(by_name["cdum"], guard, man.responses)
        decision["cdum"] = {
            "xi": _thresholds_out(man.treatments, xi),
            "xi_source": "calibrated" if pc.calibrate else "cdum.xi",
            "mode": cfg.cdum.mode,
            "weights": decision["objective_weights"],
            "scale": dict(zip(man.responses, meta["cdum_scale"], strict=True)),
            "gate": {"passed": c_passed, "problems": c_problems, "enabled": pc.gate,
                     "forced": bool(pc.force and not c_passed)},
            "cpm_version": meta["cpm_version"],
            "fic_version": meta["fic_version"],
        }
    summary = _summary(man, meta, decision, cal, table, valid, test)
    _write_outputs(cfg, root, man, decision, summary, table, frontier, cal)
    timings["reports"] = time.perf_counter() - t0 - sum(timings.values())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    (cfg.paths.reports_dir(root) / "policy.json").write_text(json.dumps(summary, indent=2) + "\n")
    verdict = "passes" if passed else "BLOCKED: " + "; ".join(problems)
    log.info("policy: σ %s (%s), HMUM DR relative lift %s on %s test users; gate %s (%.1f s)", sigma_out,
             decision["sigma_source"], [f"{v:+.2%}" for v in by_name["hmum"]["dr"]["rel_lift"]],
             f"{test.units.n:,}", verdict, summary["seconds"])
    return summary


def _thresholds_out(treatments: list[str], values) -> dict[str, float | None]:
    """Thresholds per treatment for the release: +∞ (never on) as null."""
    return {t: (float(v) if np.isfinite(v) else None) for t, v in zip(treatments, values, strict=True)}


def _summary(man, meta, decision, cal, table, valid, test) -> dict:
    by = {r["policy"]: r for r in table}
    out = {
        "hum_version": meta["hum_version"],
        "protocol": meta["protocol"],
        "dm_scale": meta["dm_scale"],
        "n_valid": int(valid.units.n),
        "n_test": int(test.units.n),
        "test_users_with_requests": meta["requests_users_share"],
        "weight_source": meta["weight_source"],
        "fixed_weights": meta["fixed_weights"],
        "mode": decision["mode"],
        "sigma": decision["sigma"],
        "sigma_source": decision["sigma_source"],
        "gate_passed": decision["gate"]["passed"],
        "objective_weights": decision["objective_weights"],
        "calibration": {n: {"sigma": [None if not np.isfinite(s) else float(s) for s in c.sigma],
                            "objective": c.objective, "rel_lift": c.rel_lift.tolist(),
                            "rel_lift_lo": c.rel_lift_lo.tolist(), "treated_share": c.treated_share,
                            "reason": c.reason} for n, c in cal.items()},
        "policies": {r["policy"]: {"dr_objective": r["dr"]["objective"], "dr_rel_lift": r["dr"]["rel_lift"],
                                   "dr_rel_lift_lo": r["dr"]["rel_lift_lo"], "treated_share": r["treated_share"],
                                   "coverage": r["coverage"],
                                   **({"true_objective": r["truth"]["objective"], "true_rel_lift": r["truth"]["rel_lift"]}
                                      if "truth" in r else {})}
                     for r in table},
    }
    # How precise can any verdict be here? The DR interval half-width of treating everyone
    # with one treatment: guard-rails much tighter than it can only be met by treating few.
    out["noise_floor"] = {
        name: dict(zip(man.responses, ((np.asarray(by[name]["dr"]["rel_lift_hi"])
                                        - np.asarray(by[name]["dr"]["rel_lift_lo"])) / 2).tolist(), strict=True))
        for name in (f"all-{t}" for t in man.treatments)
    }
    if "truth" in by["hmum"]:
        singles = [n for n in by if n.startswith(("all-", "greedy-")) and n != "all-control"]
        h = by["hmum"]["truth"]["objective"]
        out["targets"] = {
            "hmum_true_objective": h,
            "beats_every_single_strategy": bool(all(h >= by[n]["truth"]["objective"] for n in singles)),
            "beats_fixed_weight": bool(h >= by["fixed-weight"]["truth"]["objective"]),
            "both_responses_at_least_control": bool(all(v >= 0 for v in by["hmum"]["truth"]["rel_lift"])),
            "dr_interval_covers_truth": float(np.mean([c for r in table for c in r.get("dr_covers_truth", [])])),
        }
        if "cdum" in by:
            c, c0 = by["cdum"]["truth"]["objective"], by["cdum ξ=0"]["truth"]["objective"]
            out["targets"].update(
                cdum_true_objective=c, cdum_xi0_true_objective=c0,
                cdum_beats_every_single_strategy=bool(all(c >= by[n]["truth"]["objective"] for n in singles)),
                cdum_xi0_beats_every_single_strategy=bool(all(c0 >= by[n]["truth"]["objective"] for n in singles)),
                cdum_xi0_beats_cpm_alone=bool(c0 >= by["cpm alone ξ=0 (r̂=1)"]["truth"]["objective"]))
    if "cdum" in decision:
        out["cdum"] = {k: decision["cdum"][k] for k in ("xi", "xi_source", "mode", "scale", "cpm_version",
                                                         "fic_version")}
        out["cdum"]["gate_passed"] = decision["cdum"]["gate"]["passed"]
    return out


def _fmt_pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:+.2%}"


def policy_markdown(man: S.Manifest, summary: dict, table: list[dict], cal: dict, decision: dict) -> str:
    rs = man.responses
    has_truth = "truth" in table[0]
    lam = ", ".join(f"{r} {w:.2f}" for r, w in decision["objective_weights"].items())
    lines = [
        f"# Policy evaluation of HUM {summary['hum_version']} + DDM",
        "",
        (f"{summary['n_test']:,} held-out test users (σ calibrated on {summary['n_valid']:,} validation users); "
         if summary["protocol"] == "holdout" else
         f"Cross-fitted: {summary['n_test']:,} users valued and {summary['n_valid']:,} users σ is calibrated on, all "
         "with the out-of-fold δ of a model that never saw them (a hash split, policy.calibration_share); ")
        +
        f"decision mode `{summary['mode']}`. Objective: Σ_r λ_r · relative lift_r over all-control with λ = ({lam}). "
        f"Guard-rails: lower bound of the {int(round(100 * 0.95))} % DR interval ≥ −g_r with g = "
        + ", ".join(f"{r} {g:.2f} %" for r, g in decision["guardrails_pct"].items())
        + (f"; budget: ≤ {decision['budget']:.0%} treated." if decision["budget"] else "."),
        (f"{summary['test_users_with_requests']:.1%} of test users have request logs (their DDM weights are the mean "
         "over their requests); the others get the population's mean weights." if summary["weight_source"] == "ddm"
         else f"Value weights: fixed, {summary['fixed_weights']} for every user (decision.weights; equal when unset "
              "and the data has no request logs)."),
        "",
        "## Released decision",
        "",
        f"σ = {decision['sigma']} ({decision['sigma_source']}; null = never on). "
        + ("**Gate: passed.**" if decision["gate"]["passed"] else
           "**Gate: BLOCKED** — " + "; ".join(decision["gate"]["problems"])
           + (" (forced by policy.force)" if decision["gate"]["forced"] else "")),
        "",
    ]
    if "cdum" in decision:
        c = decision["cdum"]
        lines += [f"CDUM (CPM {c['cpm_version']} + FIC {c['fic_version']}, mode `{c['mode']}`): ξ = {c['xi']} "
                  f"({c['xi_source']}). " + ("**Gate: passed.**" if c["gate"]["passed"] else
                                             "**Gate: BLOCKED** — " + "; ".join(c["gate"]["problems"])), ""]
    for name, c in cal.items():
        lines.append(f"- {name}: {c.reason.replace('σ', 'ξ') if name == 'cdum' else c.reason}.")  # CDUM's threshold is ξ
    floor = summary["noise_floor"]
    widest = max(v for per in floor.values() for v in per.values())
    g = min(decision["guardrails_pct"].values()) / 100
    lines += ["", "Noise floor: the DR interval of treating everyone with one treatment spans ± "
              + ", ".join(f"{p}: " + "/".join(f"{v:.2%}" for v in per.values()) for p, per in floor.items())
              + f" ({' / '.join(rs)}). Intervals shrink as 1/√users: guard-rails of {g:.1%} leave room for policies "
              f"that treat many users only once the interval is well under them, i.e. with about "
              f"{max((widest / g) ** 2, 1):.0f}× the held-out users."]
    lines += ["", "## Relative lift over all-control (DR, 95 % bootstrap interval)", ""]
    header = ["policy", "treated", "coverage", *[f"{r} DR" for r in rs], "objective DR"]
    if has_truth:
        header += [*[f"{r} true" for r in rs], "objective true", "interest-weighted gain true"]
    body = []
    for row in table:
        dr = row["dr"]
        cells = [row["policy"], f"{row['treated_share']:.1%}", f"{row['coverage']:.0%}"]
        cells += [f"{_fmt_pct(dr['rel_lift'][i])} [{_fmt_pct(dr['rel_lift_lo'][i])}, {_fmt_pct(dr['rel_lift_hi'][i])}]"
                  for i in range(len(rs))]
        cells.append(_fmt_pct(dr["objective"]))
        if has_truth:
            t = row["truth"]
            cells += [_fmt_pct(v) for v in t["rel_lift"]] + [_fmt_pct(t["objective"]),
                                                             _fmt_pct(t["interest_weighted_gain"])]
        body.append(cells)
    lines.append(markdown_table(header, body))
    lines += ["", "## Values by estimator (response units, 95 % interval)", ""]
    header = ["policy", *[f"{r} {e}" for r in rs for e in ope.ESTIMATORS]] + ([f"{r} true" for r in rs] if has_truth else [])
    body = []
    for row in table:
        cells = [row["policy"]]
        for i in range(len(rs)):
            for e in ope.ESTIMATORS:
                v = row[e]
                cells.append(f"{v['value'][i]:.3f} [{v['value_lo'][i]:.3f}, {v['value_hi'][i]:.3f}]")
        if has_truth:
            cells += [f"{v:.3f}" for v in row["truth"]["value"]]
        body.append(cells)
    lines.append(markdown_table(header, body))
    if "targets" in summary:
        t = summary["targets"]
        lines += ["", "## Targets (simulated data, true values)", "",
                  f"- HMUM's true objective {_fmt_pct(t['hmum_true_objective'])}: ≥ every single strategy: "
                  f"{t['beats_every_single_strategy']}; ≥ fixed-weight: {t['beats_fixed_weight']}; both responses ≥ "
                  f"all-control: {t['both_responses_at_least_control']}.",
                  *([f"- CDUM's true objective {_fmt_pct(t['cdum_true_objective'])} at the released ξ "
                     f"(≥ every single strategy: {t['cdum_beats_every_single_strategy']}); at ξ = 0 "
                     f"{_fmt_pct(t['cdum_xi0_true_objective'])} (≥ every single strategy: "
                     f"{t['cdum_xi0_beats_every_single_strategy']}; ≥ CPM alone at ξ = 0: "
                     f"{t['cdum_xi0_beats_cpm_alone']})."]
                    if "cdum_true_objective" in t else []),
                  f"- Share of (policy, response) DR value intervals holding the true value: "
                  f"{t['dr_interval_covers_truth']:.0%} (one data set; coverage over seeds: "
                  "`benchmarks/policy_coverage.py`)."]
    lines += ["", "Estimators: IPS (recorded propensities), self-normalized IPS, doubly robust with the model's μ̂ "
              "(combined arms: μ̂_0·Π(1+δ̂_k)), rescaled per arm and response on training users (scales "
              + ", ".join(f"{a} {v}" for a, v in summary["dm_scale"].items())
              + "). Lifts are paired with all-control on the same bootstrap resample.", ""]
    return "\n".join(lines)


def plot_frontier(frontier: list[dict], man: S.Manifest, calibrated: dict | None):
    """Relative lift on response 1 vs response 2: DR estimates, and the truth when known."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    panels = [("dr", "DR estimate, test users")]
    if "true_x" in frontier[0]:
        panels.append(("true", "true value (simulator)"))
    # A bare Figure, not pyplot: no global figure state left behind in a long-lived process.
    fig = Figure(figsize=(6.5 * len(panels), 5.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    r1, r2 = man.responses[0], man.responses[min(1, len(man.responses) - 1)]
    styles = {"hmum": ("tab:blue", "-o"), "fixed-weight": ("tab:orange", "-s"), "oracle": ("tab:green", "-^"),
              "cdum": ("tab:purple", "-v")}
    for ax, (kind, title) in zip(axes[0], panels, strict=True):
        df = pd.DataFrame(frontier)
        for series, g in df.groupby("series", sort=False):
            x, y = g[f"{kind}_x"].to_numpy(), g[f"{kind}_y"].to_numpy()
            if series in styles:
                color, fmt = styles[series]
                # In sweep order (σ rising, or λ moving from one response to the other): the path a knob traces.
                ax.plot(x, y, fmt, color=color, ms=3, lw=1, alpha=0.8, label=series)
                front = pareto_front(np.c_[x, y])
                ax.plot(x[front], y[front], "o", mfc="none", mec=color, ms=7)
            else:
                ax.plot(x, y, "D", ms=7, label=series)
        if calibrated is not None and f"{kind}_x" in calibrated:
            ax.plot(calibrated[f"{kind}_x"], calibrated[f"{kind}_y"], "*", color="red", ms=16, label="HMUM, released σ")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"relative lift, {r1}")
        ax.set_ylabel(f"relative lift, {r2}")
        ax.set_title(title)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.legend(fontsize=8)
    fig.suptitle("Trade-off frontier (open circles: Pareto front of each sweep)")
    return fig


def _write_outputs(cfg, root, man, decision, summary, table, frontier, cal) -> None:
    out_dir = cfg.paths.policy_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (DECISION_FILE + ".tmp")
    tmp.write_text(json.dumps(decision, indent=2) + "\n")
    os.replace(tmp, out_dir / DECISION_FILE)
    reports = cfg.paths.reports_dir(root)
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "policy_table.json").write_text(json.dumps(table, indent=2) + "\n")
    (reports / "plots" / "frontier.json").write_text(json.dumps(frontier) + "\n")
    md = policy_markdown(man, summary, table, cal, decision)
    (reports / "policy.md").write_text(md)
    hm = next(r for r in table if r["policy"] == "hmum")
    r2 = min(1, len(man.responses) - 1)
    star = {"dr_x": hm["dr"]["rel_lift"][0], "dr_y": hm["dr"]["rel_lift"][r2]}
    if "truth" in hm:
        star.update(true_x=hm["truth"]["rel_lift"][0], true_y=hm["truth"]["rel_lift"][r2])
    png = save_figure(plot_frontier(frontier, man, star), reports / "frontier.png")
    write_html(reports / "policy.html", "Policy evaluation", md, [("trade-off frontier", png)])


# --------------------------------------------------------------------------- deploy's side


def read_decision(cfg: FulcrumConfig, root: Path) -> dict | None:
    path = cfg.paths.policy_dir(root) / DECISION_FILE
    return json.loads(path.read_text()) if path.exists() else None
