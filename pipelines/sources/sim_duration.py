"""The duration-mix scenario (``source.scenario: duration_mix``): CDUM's setting (spec §3).

Treatment k boosts one class of video durations: short, medium, long, then round again
(``treatment_classes``). Users have a latent long-term preference over the three classes
(``preferences``: from the binge / engagement / exploration latents the features show), and
a real-time interest that drifts within a day around it (``realtime_interest``).

- The daily (RCT) effect of treatment k is the long-term view: users who prefer the class k
  boosts gain, the others lose (``relative_effects``); longer videos trade views for time.
- Per request, the interest of the moment: the true real-time interest of treatment k is
  ``r_k = 3·rt[c_k]`` (1 = no leaning; what FIC estimates, and what CDUM's rule multiplies
  CPM's ŷ^k by), and a request's recent videos and the candidates the user plays follow ``rt``.
- Play labels: each exposed candidate is played with a probability that grows with the
  user's current interest in its class; ``models.fic_labels.play_ratio_labels`` turns them into FIC's labels.

Pure numpy; the simulator (``pipelines.sources.simulator``) writes what this computes.
"""

from __future__ import annotations

import numpy as np

from models.fic_labels import BUCKET_CLASS, CLASSES, duration_class, treatment_classes
from pipelines.sources import sim_model as M

N_CLASSES = len(CLASSES)
_CLASS_BUCKETS = [np.flatnonzero(BUCKET_CLASS == c) for c in range(N_CLASSES)]
_LENGTH = np.array([-1.0, 0.0, 1.0])  # short, medium, long: the time-vs-views tilt


def preferences(pop: M.Population) -> np.ndarray:
    """(n, 3) long-term preference over short / medium / long (rows sum to 1)."""
    z = pop.z
    logits = np.stack([0.9 * z[:, M.EXPLORE] - 0.4 * z[:, M.BINGE], 0.7 * z[:, M.ENGAGE],
                       1.0 * z[:, M.BINGE] - 0.2 * z[:, M.EXPLORE]], axis=1)
    return M._softmax(logits).astype(np.float32)


EFFECT_SCALE = 0.09


def relative_effects(pop: M.Population, n_treatments: int, n_responses: int, scale: float = EFFECT_SCALE) -> np.ndarray:
    """(n, K, R) true daily relative effects: ``scale·(3·pref[c_k] − 1)`` plus a time-vs-views tilt by length."""
    return _effects(N_CLASSES * preferences(pop)[:, treatment_classes(n_treatments)], n_treatments, n_responses, scale)


def request_effects(interest: np.ndarray, n_responses: int, scale: float = EFFECT_SCALE) -> np.ndarray:
    """(m, K, R) true relative effects of switching treatment k on for one request: the daily effect's
    formula with the moment's interest ``r_k = 3·rt[c_k]`` (:func:`true_interest`) for the long-term ``3·pref``."""
    return _effects(np.asarray(interest, dtype=np.float32), interest.shape[1], n_responses, scale)


def _effects(liking_ratio: np.ndarray, n_treatments: int, n_responses: int, scale: float) -> np.ndarray:
    liking = scale * (liking_ratio - 1.0)  # > 0 for users who (now, or usually) prefer the boosted class
    tilt = 0.02 * _LENGTH[treatment_classes(n_treatments)]  # long videos: more time, fewer views
    tau = np.repeat(liking[:, :, None], n_responses, axis=2)
    tau[:, :, 0] += tilt
    if n_responses > 1:
        tau[:, :, 1] -= tilt
    return tau.astype(np.float32)


def realtime_interest(pref: np.ndarray, day_group: np.ndarray, volatility: float,
                      rng: np.random.Generator) -> np.ndarray:
    """(m, 3) each request's current interest: the user's preference moved by a per-day shift
    and a within-day random walk (requests grouped by user-day, chronological)."""
    m = len(pref)
    if m == 0:
        return pref.copy()
    shift = rng.normal(0, 0.4, (day_group.max() + 1, N_CLASSES))[day_group]
    walk = M._group_cumsum(rng.normal(0, volatility, (m, N_CLASSES)), day_group)
    return M._softmax(np.log(pref + 1e-6) + shift + walk).astype(np.float32)


def true_interest(rt: np.ndarray, n_treatments: int) -> np.ndarray:
    """(m, K) r_k = 3·rt[c_k]: how much the user wants class c_k right now (1 = no leaning; what FIC estimates)."""
    return (N_CLASSES * rt[:, treatment_classes(n_treatments)]).astype(np.float32)


def recent_durations(rt: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """(m, L) duration buckets of the recently watched videos: classes drawn from the current interest."""
    m = len(rt)
    cls = (rng.random((m, length, 1)) > np.cumsum(rt, axis=1)[:, None, :]).sum(-1)  # (m, L) class per item
    cls = np.minimum(cls, N_CLASSES - 1)
    pick = rng.random((m, length))
    out = np.empty((m, length), dtype=np.int32)
    for c, buckets in enumerate(_CLASS_BUCKETS):
        mask = cls == c
        out[mask] = buckets[(pick[mask] * len(buckets)).astype(np.int64)]
    return out


def play(cand_duration: np.ndarray, exposed: np.ndarray, rt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(m, V) bool: exposed candidates the user plays through; likelier the more they want its class now."""
    want = np.take_along_axis(rt, duration_class(cand_duration), axis=1)  # (m, V)
    p = M._sigmoid(3.0 * (N_CLASSES * want - 1.0) - 0.3)
    return exposed & (rng.random(cand_duration.shape) < p)
