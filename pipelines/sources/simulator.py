"""The simulator source: writes the canonical RCT dataset block by block (flat memory)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import CONTROL, SimulatorSource
from fulcrum.progress import progress
from pipelines.sources import sim_duration as D
from pipelines.sources import sim_model as M

_US_PER_DAY = 86_400 * 1_000_000
_TS = pa.timestamp("us", tz="UTC")


def _day_start_us(d) -> int:
    dt = datetime.combine(d, time(0), tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(_TS)


def _lists(values: np.ndarray) -> pa.ListArray:
    """(m, L) array -> list<...> column of m lists of length L."""
    m, length = values.shape
    offsets = pa.array(np.arange(0, m * length + 1, length, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


class _Writers:
    """Lazily opened parquet writers, one per output file."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.open: dict[str, pq.ParquetWriter] = {}

    def write(self, name: str, table: pa.Table) -> None:
        if name not in self.open:
            self.open[name] = pq.ParquetWriter(self.out_dir / name, table.schema, compression="snappy")
        self.open[name].write_table(table)

    def close(self) -> None:
        for w in self.open.values():
            w.close()


def _duration_mix(pop, req: M.RequestBlock, cfg: SimulatorSource, rng) -> tuple[np.ndarray, np.ndarray]:
    """The duration-mix scenario's request parts: recent durations follow the real-time interest
    (overwritten in ``req``); returns (played (m, V) bool, true interest (m, K))."""
    pref = D.preferences(pop)[req.user_index]  # (m, 3)
    _, day_group = np.unique(req.user_index.astype(np.int64) * 1000 + req.day, return_inverse=True)
    rt = D.realtime_interest(pref, day_group, cfg.requests.interest_volatility, rng)
    req.recent_duration = D.recent_durations(rt, req.recent_duration.shape[1], rng)
    played = D.play(req.cand_duration, req.cand_exposed, rt, rng)
    return played, D.true_interest(rt, len(cfg.treatments))


@dataclass(frozen=True)
class RctBlock:
    """One block of simulated users: who they are, their true effects, their arm and responses."""

    pop: M.Population
    tau: np.ndarray  # (n, 1+K+C, R) true relative effects per arm (control's zeros first)
    mu: np.ndarray  # (n, 1+K+C, R) expected responses per arm
    arm: np.ndarray  # (n,) the assigned arm's index
    assign_day: np.ndarray  # (n,) day of the experiment the user was assigned
    assign_sec: np.ndarray  # (n,) second of that day
    y: np.ndarray  # (n, R) observed responses under the assigned arm
    day_rng: np.random.Generator  # the block's generators still to be drawn from (daily activity, requests)
    req_rng: np.random.Generator


def rct_block(cfg: SimulatorSource, params: M.EffectParams, b: int) -> RctBlock:
    """Block ``b``'s users, true effects, randomized arms and responses: the RCT part of ``simulate_to``
    (also read by benchmarks that need the latent population behind a simulated data set)."""
    n = min(M.BLOCK, cfg.n_users - b * M.BLOCK)
    n_t, n_r = len(cfg.treatments), len(cfg.responses)
    combo_members = [[cfg.treatments.index(t) for t in c.split("+")] for c in cfg.combined_arms]
    shares = np.asarray(cfg.shares())
    pop_rng, day_rng, out_rng, req_rng = M.block_rngs(cfg.seed, b)
    pop = M.make_population(b * M.BLOCK + 1, n, pop_rng)
    if cfg.scenario == "duration_mix":
        tau = cfg.effect_scale * D.relative_effects(pop, n_t, n_r)  # (n, K, R)
    else:
        tau = cfg.effect_scale * M.relative_effects(pop, n_t, n_r, params)  # (n, K, R)
    combo = M.combined_effects(tau, combo_members, cfg.combo_interaction)  # (n, C, R)
    # With no combined arms this is the (n, K+1, R) array of before: same values, same draws.
    tau = np.concatenate([np.zeros((n, 1, n_r), np.float32), tau, combo], axis=1)  # (n, 1+K+C, R)
    mu = M.baseline_means(pop, n_r)[:, None, :] * (1.0 + tau)  # (n, 1+K+C, R)
    arm = out_rng.choice(len(shares), size=n, p=shares)
    assign_day = out_rng.integers(0, cfg.experiment_days, n)
    assign_sec = out_rng.integers(0, 86_400, n)
    y = M.draw_responses(mu[np.arange(n), arm], cfg.noise_scale, out_rng)
    return RctBlock(pop, tau, mu, arm, assign_day, assign_sec, y, day_rng, req_rng)


def effect_params_of(cfg: SimulatorSource) -> M.EffectParams:
    """The random effect shapes of ``cfg``'s seed (cells beyond the designed ones)."""
    return M.effect_params(cfg.seed, len(cfg.treatments), len(cfg.responses), n_basis=10)


def simulate_to(cfg: SimulatorSource, out_dir: Path) -> S.Manifest:
    """Simulate users, the RCT, the truth and the request logs into ``out_dir``."""
    arms = cfg.arm_names()  # control, single treatments, combined arms
    n_r = len(cfg.responses)
    shares = np.asarray(cfg.shares())
    n_snap = cfg.feature_days + cfg.experiment_days
    n_days = M.HISTORY_DAYS + n_snap
    first_snapshot = cfg.start_date - timedelta(days=cfg.feature_days)
    # End-of-day snapshot timestamps (23:59:59), one per snapshot day.
    snap_us = _day_start_us(first_snapshot) + np.arange(n_snap) * _US_PER_DAY + (_US_PER_DAY - 1_000_000)
    exp_start_us = _day_start_us(cfg.start_date)
    params = effect_params_of(cfg)
    n_blocks = -(-cfg.n_users // M.BLOCK)
    writers = _Writers(out_dir)
    n_requests = 0
    for name in (S.FEATURES_FILE, S.EXPERIMENT_FILE, S.TRUTH_FILE, S.REQUESTS_FILE, S.REQUESTS_TRUTH_FILE):
        (out_dir / name).unlink(missing_ok=True)
    try:
        with progress("simulating users", cfg.n_users, "users") as advance:
            for b in range(n_blocks):
                n = min(M.BLOCK, cfg.n_users - b * M.BLOCK)
                blk = rct_block(cfg, params, b)
                pop, tau, mu, arm, y, day_rng, req_rng = blk.pop, blk.tau, blk.mu, blk.arm, blk.y, blk.day_rng, blk.req_rng
                assign_day, assign_sec = blk.assign_day, blk.assign_sec
                rows = np.arange(n)

                # From the day after assignment, daily activity carries the arm's effect.
                mult = np.ones((n_days, n, 2), np.float32)
                first_treated_day = M.HISTORY_DAYS + cfg.feature_days + assign_day + 1
                after = np.arange(n_days)[:, None] >= first_treated_day[None, :]
                own = tau[rows, arm]  # (n, R)
                mult[..., 0] = np.where(after, 1 + own[None, :, 0], 1.0)
                mult[..., 1] = np.where(after, 1 + own[None, :, min(1, n_r - 1)], 1.0)
                minutes, views, active = M.daily_activity(pop, n_days, cfg.drift, day_rng, mult)
                feats = M.snapshot_features(pop, minutes, views, active, n_snap, cfg.drift, day_rng)

                cols = {S.USER_ID: pa.array(np.tile(pop.user_id, n_snap)), S.EVENT_TS: _ts(np.repeat(snap_us, n))}
                for name in M.CATEGORICAL_LEVELS:
                    cols[name] = pa.array(np.ascontiguousarray(feats[name]).reshape(-1).astype(np.int32))
                for name in M.NUMERIC_FEATURES:
                    cols[name] = pa.array(np.ascontiguousarray(feats[name]).reshape(-1).astype(np.float32))
                writers.write(S.FEATURES_FILE, pa.table(cols))

                assign_us = exp_start_us + assign_day * _US_PER_DAY + assign_sec * 1_000_000
                exp_cols = {
                    S.USER_ID: pa.array(pop.user_id),
                    S.ASSIGN_TS: _ts(assign_us),
                    S.ARM: pa.array(np.asarray(arms)[arm]),
                    S.ARM_INDEX: pa.array(arm.astype(np.int8)),
                    S.PROPENSITY: pa.array(shares[arm]),
                }
                for r, resp in enumerate(cfg.responses):
                    exp_cols[resp] = pa.array(y[:, r])
                writers.write(S.EXPERIMENT_FILE, pa.table(exp_cols))

                truth = {S.USER_ID: pa.array(pop.user_id)}
                for k, a in enumerate(arms):
                    for r, resp in enumerate(cfg.responses):
                        truth[S.truth_column(a, resp)] = pa.array(mu[:, k, r])
                writers.write(S.TRUTH_FILE, pa.table(truth))

                req = M.make_requests(pop, cfg, req_rng)
                duration_mix = _duration_mix(pop, req, cfg, req_rng) if cfg.scenario == "duration_mix" else None
                m = len(req.user_index)
                if m:
                    ids = np.arange(n_requests + 1, n_requests + m + 1, dtype=np.int64)
                    n_requests += m
                    req_cols = {
                        S.REQUEST_ID: pa.array(ids),
                        S.USER_ID: pa.array(pop.user_id[req.user_index]),
                        S.REQUEST_TS: _ts(exp_start_us + req.day * _US_PER_DAY + req.second * 1_000_000),
                    }
                    for part, d, c, sc in (
                        ("recent", req.recent_duration, req.recent_category, req.recent_scores),
                        ("cand", req.cand_duration, req.cand_category, req.cand_scores),
                    ):
                        names = S.item_columns(part, cfg.responses)
                        req_cols[names[0]] = _lists(d)
                        req_cols[names[1]] = _lists(c)
                        for r in range(n_r):
                            req_cols[names[2 + r]] = _lists(np.ascontiguousarray(sc[..., r]))
                    req_cols["cand_exposed"] = _lists(req.cand_exposed)
                    if duration_mix is not None:
                        req_cols[S.PLAYED] = _lists(duration_mix[0])
                    writers.write(S.REQUESTS_FILE, pa.table(req_cols))
                    mix = {S.REQUEST_ID: pa.array(ids)}
                    for r, resp in enumerate(cfg.responses):
                        mix[S.mix_column(resp)] = pa.array(req.mix[:, r])
                    if duration_mix is not None:
                        for k, t in enumerate(cfg.treatments):
                            mix[S.interest_column(t)] = pa.array(duration_mix[1][:, k])
                    writers.write(S.REQUESTS_TRUTH_FILE, pa.table(mix))
                advance(n)
    finally:
        writers.close()

    features = [S.FeatureSpec(name=k, kind="categorical", levels=v) for k, v in M.CATEGORICAL_LEVELS.items()]
    features += [S.FeatureSpec(name=k, kind="numeric") for k in M.NUMERIC_FEATURES]
    return S.Manifest(
        source="simulator",
        arms=[CONTROL, *cfg.treatments],
        combined_arms=list(cfg.combined_arms),
        responses=list(cfg.responses),
        features=features,
        n_users=cfg.n_users,
        n_experiment_rows=cfg.n_users,
        n_feature_rows=cfg.n_users * n_snap,
        n_requests=n_requests,
        has_truth=True,
        has_requests=n_requests > 0,
        first_snapshot=str(first_snapshot),
        last_snapshot=str(first_snapshot + timedelta(days=n_snap - 1)),
    )
