"""The short-video platform simulator's generative model (pure numpy, no I/O).

Users are generated in fixed blocks of ``BLOCK`` users, each block from its own
``SeedSequence([seed, block])``: the output depends only on the seed and the
configuration, never on how blocks are scheduled.

The story the simulator tells (see README, "The simulator"):

* Each user has five latent traits ``z`` ~ N(0, 1): binge (long-video affinity),
  ad (ad tolerance / commercial value), social, engage (overall activity) and
  explore (appetite for variety). Features show them only through noise.
* Daily usage minutes and video views are drawn day by day; the offline features
  are rolling 7/30-day aggregates, snapshotted at the end of each day.
* The treatments change the ranking: t1 (consumption-side scorer) pushes longer,
  deeper content, t2 (commercialization-side scorer) pushes higher-value content.
  Their relative effects on each response depend non-linearly on features and
  latent traits and conflict across responses (see :func:`relative_effects`).
* Optional combined arms switch several treatments on together. The strategies
  compete for the same feed slots, so their relative effects add but a share
  ι = ``combo_interaction`` of the sum is lost: for a set S of treatments,
  δ_S = (1 − ι) · Σ_{k∈S} δ_k per response and user (ι = 0: additive; see
  :func:`combined_effects`).
* After assignment the user's daily activity carries the effect of their arm, so
  feature snapshots taken after assignment leak the treatment: point-in-time
  joins matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fulcrum.config import SimulatorSource

BLOCK = 65_536
HISTORY_DAYS = 29  # extra days before the first snapshot so 30-day windows are full
N_LATENT = 5
BINGE, AD, SOCIAL, ENGAGE, EXPLORE = range(N_LATENT)

CATEGORICAL_LEVELS: dict[str, list[str]] = {
    "region": ["north", "south", "east", "west", "central", "coastal", "mountain", "overseas"],
    "age_bucket": ["13-17", "18-24", "25-34", "35-44", "45-54", "55+"],
    "gender": ["female", "male", "unknown"],
    "device_tier": ["low", "mid", "high"],
    "activity_level": ["light", "casual", "regular", "heavy"],
    "value_tier": ["v0", "v1", "v2", "v3", "v4"],
}
NUMERIC_FEATURES = [
    "usage_time_7d",
    "usage_time_30d",
    "video_views_7d",
    "video_views_30d",
    "active_days_30d",
    "likes_7d",
    "follows_30d",
    "shares_30d",
    "tenure_days",
    "avg_watch_ratio_7d",
    "long_video_share_7d",
    "ad_click_rate_30d",
]
_REGION_P = np.array([0.22, 0.18, 0.16, 0.14, 0.12, 0.09, 0.06, 0.03])
_REGION_EFFECT = np.array([0.05, -0.05, 0.1, 0.0, -0.1, 0.15, -0.2, -0.3])
_AGE_P = np.array([0.08, 0.27, 0.28, 0.18, 0.11, 0.08])
_AGE_EFFECT = np.array([0.2, 0.25, 0.05, -0.05, -0.15, -0.25])
_ACTIVITY_CUTS = np.array([120.0, 450.0, 1200.0])  # minutes in 30 days
N_DURATION_BUCKETS = 5


def block_rngs(seed: int, block: int, n: int = 4) -> list[np.random.Generator]:
    """Independent generators for one block: population, daily, outcome, requests."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, block]).spawn(n)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- population


@dataclass
class Population:
    """Static per-user attributes of one block (all arrays have length n)."""

    user_id: np.ndarray  # int64
    z: np.ndarray  # (n, N_LATENT) latent traits
    region: np.ndarray
    age_bucket: np.ndarray
    gender: np.ndarray
    device_tier: np.ndarray
    value_tier: np.ndarray
    tenure0: np.ndarray  # tenure in days at the first snapshot
    base_minutes: np.ndarray  # expected minutes on an active day
    p_active: np.ndarray  # probability of opening the app on a day
    views_per_min: np.ndarray
    watch_ratio: np.ndarray  # user-level mean watch ratio
    long_share: np.ndarray  # user-level share of long videos
    ad_rate: np.ndarray  # user-level ad click rate

    @property
    def n(self) -> int:
        return len(self.user_id)


def make_population(first_id: int, n: int, rng: np.random.Generator) -> Population:
    z = rng.standard_normal((n, N_LATENT)).astype(np.float32)
    region = rng.choice(len(_REGION_P), size=n, p=_REGION_P)
    # Younger users binge less and explore more: age correlates with latent traits.
    age_logits = np.log(_AGE_P)[None, :] + np.outer(z[:, EXPLORE], np.linspace(0.4, -0.4, 6))
    age_bucket = _categorical(age_logits, rng)
    gender = rng.choice(3, size=n, p=[0.48, 0.47, 0.05])
    dev_score = 0.6 * z[:, AD] + 0.3 * z[:, ENGAGE] + rng.standard_normal(n)
    device_tier = np.digitize(dev_score, [-0.6, 0.7])
    val_score = 0.9 * z[:, AD] + 0.4 * device_tier + 0.7 * rng.standard_normal(n)
    value_tier = np.digitize(val_score, [-0.9, 0.0, 0.8, 1.6])
    tenure0 = np.floor(rng.lognormal(6.0, 1.0, n)).clip(1, 4000)
    log_minutes = (
        2.9
        + 0.55 * z[:, ENGAGE]
        + 0.25 * z[:, BINGE]
        + _REGION_EFFECT[region]
        + _AGE_EFFECT[age_bucket]
        + 0.1 * np.log1p(tenure0) / 8
        + 0.35 * rng.standard_normal(n)  # part of the baseline no feature explains
    )
    return Population(
        user_id=np.arange(first_id, first_id + n, dtype=np.int64),
        z=z,
        region=region,
        age_bucket=age_bucket,
        gender=gender,
        device_tier=device_tier,
        value_tier=value_tier,
        tenure0=tenure0,
        base_minutes=np.exp(log_minutes),
        p_active=_sigmoid(1.2 + 1.1 * z[:, ENGAGE] + 0.3 * rng.standard_normal(n)),
        views_per_min=np.exp(0.55 - 0.45 * z[:, BINGE] + 0.15 * z[:, EXPLORE] + 0.2 * rng.standard_normal(n)),
        watch_ratio=_sigmoid(0.1 + 0.5 * z[:, BINGE] + 0.3 * z[:, ENGAGE] + 0.4 * rng.standard_normal(n)),
        long_share=_sigmoid(-0.8 + 0.9 * z[:, BINGE] + 0.6 * rng.standard_normal(n)),
        ad_rate=_sigmoid(-4.0 + 0.7 * z[:, AD] + 0.5 * rng.standard_normal(n)),
    )


def _categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from softmax(logits) via the Gumbel-max trick (vectorized)."""
    g = rng.gumbel(size=logits.shape)
    return np.argmax(logits + g, axis=1)


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class EffectParams:
    """Random effect shapes for treatments/responses beyond the designed defaults."""

    proj: np.ndarray  # (K, R, P) projections of the heterogeneity basis
    mean: np.ndarray  # (K, R) average relative effect
    amp: np.ndarray  # (K, R) heterogeneity amplitude


def effect_params(seed: int, n_treatments: int, n_responses: int, n_basis: int) -> EffectParams:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    proj = rng.standard_normal((n_treatments, n_responses, n_basis)) / np.sqrt(n_basis)
    mean = rng.uniform(-0.03, 0.03, (n_treatments, n_responses))
    amp = rng.uniform(0.03, 0.08, (n_treatments, n_responses))
    return EffectParams(proj, mean, amp)


def effect_basis(pop: Population) -> np.ndarray:
    """Non-linear heterogeneity basis: latent traits, features, interactions, thresholds."""
    z = pop.z
    young = (pop.age_bucket <= 1).astype(np.float32)
    low_dev = (pop.device_tier == 0).astype(np.float32)
    val = (pop.value_tier - 2.0) / 2.0
    cols = [
        z[:, BINGE],
        z[:, AD],
        z[:, EXPLORE],
        young * z[:, BINGE],
        np.sin(1.5 * z[:, ENGAGE]),
        np.cos(2.0 * z[:, SOCIAL]),
        z[:, BINGE] * z[:, EXPLORE],
        low_dev,
        val,
        np.isin(pop.region, [1, 4]).astype(np.float32),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def relative_effects(pop: Population, n_treatments: int, n_responses: int, params: EffectParams) -> np.ndarray:
    """True relative effects tau[i, k, r] = E[y_r | t=k+1] / E[y_r | t=0] - 1, shape (n, K, R).

    Designed defaults (the first two treatments on the first two responses):
    t1 lifts usage time and lowers views where h1 > 0 (bingers: longer videos, fewer
    of them) and does the reverse where h1 < 0; t2 lifts views and lowers time where
    h2 > 0 (ad-tolerant, high-value users), the reverse elsewhere. Averages are a few
    percent; the spread across users is larger than the average.
    """
    b = effect_basis(pop)
    # Generic shapes first; designed cells overwrite them.
    tau = params.mean[None] + params.amp[None] * np.tanh(np.einsum("np,krp->nkr", b, params.proj))
    h1 = np.tanh(0.9 * b[:, 0] - 0.5 * b[:, 2] + 0.6 * b[:, 3] + 0.4 * b[:, 4] - 0.3 * b[:, 7])
    h2 = np.tanh(0.8 * b[:, 1] + 0.4 * b[:, 8] - 0.5 * b[:, 6] + 0.3 * b[:, 9] + 0.3 * b[:, 5])
    designed = {
        (0, 0): 0.030 + 0.070 * h1,  # t1 on usage time
        (0, 1): -0.010 - 0.060 * h1,  # t1 on views
        (1, 0): -0.010 - 0.050 * h2,  # t2 on usage time
        (1, 1): 0.025 + 0.060 * h2,  # t2 on views
    }
    for (k, r), v in designed.items():
        if k < n_treatments and r < n_responses:
            tau[:, k, r] = v
    return tau.astype(np.float32)


def combined_effects(tau: np.ndarray, members: list[list[int]], interaction: float) -> np.ndarray:
    """Relative effects of combined arms, shape (n, C, R), from single-treatment ones.

    ``tau`` (n, K, R) are the single treatments' relative effects; ``members[c]`` the
    treatment indices (into K) of combined arm c. The strategies compete for the same
    feed slots, so a share ``interaction`` of the summed effect is lost:
    tau_S = (1 − interaction) · Σ_{k∈S} tau_k.
    """
    n, _, n_r = tau.shape
    if not members:
        return np.zeros((n, 0, n_r), dtype=tau.dtype)
    summed = np.stack([tau[:, idx, :].sum(axis=1) for idx in members], axis=1)
    return ((1.0 - interaction) * summed).astype(tau.dtype)


# --------------------------------------------------------------------------- daily activity


def daily_activity(
    pop: Population,
    n_days: int,
    drift: float,
    rng: np.random.Generator,
    day_multiplier: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Daily minutes, views and active flags, shape (n_days, n); ``n_days`` includes history.

    ``day_multiplier`` (n_days, n, 2) scales minutes and views (the treatment's
    effect after assignment). ``drift`` grows activity day over day.
    """
    n = pop.n
    active = rng.random((n_days, n), dtype=np.float32) < pop.p_active[None, :]
    trend = np.exp(drift * (np.arange(n_days, dtype=np.float32) - HISTORY_DAYS)).clip(0, None)
    minutes = pop.base_minutes[None, :] * rng.lognormal(-0.18, 0.6, (n_days, n)).astype(np.float32)
    minutes = minutes * trend[:, None] * active
    rate = minutes * pop.views_per_min[None, :]
    if day_multiplier is not None:
        minutes = minutes * day_multiplier[..., 0]
        rate = rate * day_multiplier[..., 1]
    views = rng.poisson(rate).astype(np.float32)
    return minutes.astype(np.float32), views, active


def snapshot_features(
    pop: Population,
    minutes: np.ndarray,
    views: np.ndarray,
    active: np.ndarray,
    n_snapshots: int,
    drift: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Rolling-window features at the end of each snapshot day, each of shape (n_snapshots, n)."""
    n = pop.n

    def window(x: np.ndarray, w: int) -> np.ndarray:
        c = np.concatenate([np.zeros((1, n), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])
        end = np.arange(HISTORY_DAYS, HISTORY_DAYS + n_snapshots) + 1
        return (c[end] - c[end - w]).astype(np.float32)

    s = np.arange(n_snapshots, dtype=np.float32)[:, None]
    shape = (n_snapshots, n)
    usage30 = window(minutes, 30)
    views7 = window(views, 7)
    views30 = window(views, 30)
    social = pop.z[None, :, SOCIAL]
    likes7 = rng.binomial(views7.astype(np.int64), _sigmoid(-3.2 + 0.6 * social)).astype(np.float32)
    follows30 = rng.poisson(0.004 * views30 * np.exp(0.5 * social)).astype(np.float32)
    shares30 = rng.poisson(0.002 * views30 * np.exp(0.7 * social)).astype(np.float32)
    # Drift also moves the device mix: a growing share of low-tier users upgrade.
    upgrade = rng.random(n) < np.clip(drift * 3 * s, 0, 1)
    device = np.where(upgrade & (pop.device_tier[None, :] == 0), 2, pop.device_tier[None, :])
    jitter = 0.08 * rng.standard_normal(shape)
    feats = {
        "region": np.broadcast_to(pop.region, shape),
        "age_bucket": np.broadcast_to(pop.age_bucket, shape),
        "gender": np.broadcast_to(pop.gender, shape),
        "device_tier": device,
        "activity_level": np.digitize(usage30, _ACTIVITY_CUTS),
        "value_tier": np.broadcast_to(pop.value_tier, shape),
        "usage_time_7d": window(minutes, 7),
        "usage_time_30d": usage30,
        "video_views_7d": views7,
        "video_views_30d": views30,
        "active_days_30d": window(active.astype(np.float32), 30),
        "likes_7d": likes7,
        "follows_30d": follows30,
        "shares_30d": shares30,
        "tenure_days": pop.tenure0[None, :] + s,
        "avg_watch_ratio_7d": np.clip(pop.watch_ratio[None, :] + jitter, 0, 1),
        "long_video_share_7d": np.clip(pop.long_share[None, :] * (1 + drift * s) + jitter, 0, 1),
        "ad_click_rate_30d": np.clip(pop.ad_rate[None, :] * np.exp(jitter), 0, 1),
    }
    # Inactive users have no watch behaviour in the window.
    idle7 = feats["usage_time_7d"] <= 0
    feats["avg_watch_ratio_7d"] = np.where(idle7, 0.0, feats["avg_watch_ratio_7d"])
    feats["long_video_share_7d"] = np.where(idle7, 0.0, feats["long_video_share_7d"])
    return feats


# --------------------------------------------------------------------------- experiment


def baseline_means(pop: Population, n_responses: int, window_days: int = 7) -> np.ndarray:
    """Expected control-arm response over the observation window, shape (n, R).

    Response 1 behaves like usage minutes, response 2 like view counts; further
    responses are positive mixtures of the two with a latent tilt.
    """
    minutes = window_days * pop.p_active * pop.base_minutes
    # A latent-only, non-linear factor: features cannot explain all of the baseline.
    hidden = np.exp(0.15 * np.tanh(pop.z[:, SOCIAL] * pop.z[:, ENGAGE]))
    cols = [minutes * hidden, minutes * pop.views_per_min * hidden]
    for r in range(2, n_responses):
        tilt = np.exp(0.3 * pop.z[:, (r % N_LATENT)])
        cols.append((0.5 * cols[0] + 0.5 * cols[1]) * tilt)
    return np.stack(cols[:n_responses], axis=1).astype(np.float64)


def draw_responses(mu: np.ndarray, noise_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Observed non-negative, skewed, noisy responses with mean ``mu`` (n, R).

    Even responses (0, 2, ...) are continuous: mu times a mean-one lognormal with a
    point mass at zero (users who never came back). Odd responses are counts:
    negative binomial (a Poisson-gamma mixture) with mean mu.
    """
    n, n_resp = mu.shape
    out = np.empty_like(mu)
    if noise_scale == 0:
        return mu.copy()
    s = 0.9 * noise_scale
    p_zero = min(0.08 * noise_scale, 0.5)
    for r in range(n_resp):
        if r % 2 == 0:
            came_back = rng.random(n) >= p_zero
            noise = rng.lognormal(-0.5 * s * s, s, n) / (1 - p_zero)
            out[:, r] = mu[:, r] * noise * came_back
        else:
            shape = 1.5 / noise_scale**2
            out[:, r] = rng.poisson(mu[:, r] * rng.gamma(shape, 1.0 / shape, n))
    return out


# --------------------------------------------------------------------------- requests


def interest_logits(pop: Population, n_responses: int) -> np.ndarray:
    """User-level interest logits per response (n, R): what the user tends to want."""
    z = pop.z
    cols = [0.8 * z[:, BINGE] + 0.3 * z[:, ENGAGE], 0.6 * z[:, EXPLORE] - 0.3 * z[:, BINGE] + 0.4 * z[:, AD]]
    for r in range(2, n_responses):
        cols.append(0.5 * z[:, r % N_LATENT])
    return np.stack(cols[:n_responses], axis=1).astype(np.float32)


def draw_videos(shape: tuple[int, ...], n_responses: int, n_categories: int, rng: np.random.Generator):
    """Random videos: duration bucket, category and per-response score percentiles (..., R)."""
    duration = rng.integers(0, N_DURATION_BUCKETS, size=shape)
    # Long videos score higher on the first (consumption) score, short ones on the rest.
    tilt = (duration - (N_DURATION_BUCKETS - 1) / 2) / N_DURATION_BUCKETS
    raw = rng.standard_normal(shape + (n_responses,))
    raw[..., 0] += 1.2 * tilt
    if n_responses > 1:
        raw[..., 1:] -= 1.2 * tilt[..., None]
    scores = _sigmoid(1.3 * raw).astype(np.float32)
    ranks = np.arange(1, n_categories + 1)
    p_cat = (1.0 / ranks) / (1.0 / ranks).sum()  # Zipf-like category popularity
    category = rng.choice(n_categories, size=shape, p=p_cat)
    return duration.astype(np.int32), category.astype(np.int32), scores


def top_by_interest(scores: np.ndarray, mix: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the k videos a user engages with: utility = 4·(mix·scores) + Gumbel noise.

    scores (n, V, R), mix (n, R) -> (n, k) indices sorted by utility.
    """
    utility = 4.0 * np.einsum("nvr,nr->nv", scores, mix) + rng.gumbel(size=scores.shape[:2])
    idx = np.argpartition(-utility, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(utility, idx, 1), axis=1)
    return np.take_along_axis(idx, order, 1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class RequestBlock:
    user_index: np.ndarray  # (m,) index into the block's population
    day: np.ndarray  # (m,) experiment day
    second: np.ndarray  # (m,) second of the day
    mix: np.ndarray  # (m, R) true real-time interest mix
    recent_duration: np.ndarray  # (m, L)
    recent_category: np.ndarray
    recent_scores: np.ndarray  # (m, L, R)
    cand_duration: np.ndarray  # (m, V)
    cand_category: np.ndarray
    cand_scores: np.ndarray  # (m, V, R)
    cand_exposed: np.ndarray  # (m, V) bool


def make_requests(pop: Population, cfg: SimulatorSource, rng: np.random.Generator) -> RequestBlock:
    """Requests of a random share of users, with a drifting real-time interest mix."""
    rc, n_resp = cfg.requests, len(cfg.responses)
    has = rng.random(pop.n) < rc.user_share
    counts = np.where(has, 1 + rng.poisson(max(rc.per_user_mean - 1, 0), pop.n), 0)
    user_index = np.repeat(np.arange(pop.n), counts)
    m = len(user_index)
    day = rng.integers(0, cfg.experiment_days, m)
    second = rng.integers(0, 86_400, m)
    order = np.lexsort((second, day, user_index))  # chronological per user
    user_index, day, second = user_index[order], day[order], second[order]
    # Interest mix: user base + a per-(user, day) shift + a within-day random walk.
    base = interest_logits(pop, n_resp)[user_index]
    day_key = user_index.astype(np.int64) * 1000 + day
    _, day_group = np.unique(day_key, return_inverse=True)
    day_shift = rng.normal(0, 0.5, (day_group.max() + 1 if m else 0, n_resp))[day_group]
    steps = rng.normal(0, rc.interest_volatility, (m, n_resp))
    walk = _group_cumsum(steps, day_group)
    mix = _softmax(base + day_shift + walk).astype(np.float32)
    # Recent interactions reflect the current mix: 2L random videos, keep the L liked most.
    pool_d, pool_c, pool_s = draw_videos((m, 2 * rc.recent_len), n_resp, rc.n_categories, rng)
    keep = top_by_interest(pool_s, mix, rc.recent_len, rng)
    cand_d, cand_c, cand_s = draw_videos((m, rc.candidates), n_resp, rc.n_categories, rng)
    exposed_idx = top_by_interest(cand_s, mix, rc.exposed, rng)
    exposed = np.zeros((m, rc.candidates), dtype=bool)
    np.put_along_axis(exposed, exposed_idx, True, axis=1)
    return RequestBlock(
        user_index=user_index,
        day=day,
        second=second,
        mix=mix,
        recent_duration=np.take_along_axis(pool_d, keep, 1),
        recent_category=np.take_along_axis(pool_c, keep, 1),
        recent_scores=np.take_along_axis(pool_s, keep[..., None], 1),
        cand_duration=cand_d,
        cand_category=cand_c,
        cand_scores=cand_s,
        cand_exposed=exposed,
    )


def _group_cumsum(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Cumulative sum within consecutive runs of equal ``group`` (rows already grouped)."""
    if len(x) == 0:
        return x
    c = np.cumsum(x, axis=0)
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    run_len = np.diff(np.r_[starts, len(x)])
    offset = np.repeat(c[starts] - x[starts], run_len, axis=0)
    return c - offset
