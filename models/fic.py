"""FIC: CDUM's real-time interest model (spec §3), per request and treatment.

Treatment k boosts one class of video durations (short / medium / long). FIC reads the
request the way DDM does (the user's recent videos and this request's candidates: duration
bucket, category, score percentiles), so it is DDM's network (``models.ddm.DDMNet``) with one
softplus tower per treatment instead of per response, starting at 1: ``r̂^k`` says how much
more (> 1) or less (< 1) than usual the user wants class ``c_k`` right now. Its labels are
the request's play ratios (:func:`play_ratio_labels`); the service runs the numpy twin
(``models.ddm_numpy.NumpyDDM.outputs``, tested equal to torch).
"""

from __future__ import annotations

import numpy as np

from models.ddm import DDMNet, DDMNetConfig
from models.ddm_numpy import PARTS

CLASSES = ("short", "medium", "long")
BUCKET_CLASS = np.array([0, 0, 1, 2, 2], dtype=np.int64)  # duration bucket (short to long) -> class


def treatment_classes(n_treatments: int) -> np.ndarray:
    """(K,) the duration class each treatment boosts: short, medium, long, short, ..."""
    return np.arange(n_treatments) % len(CLASSES)


def duration_class(bucket: np.ndarray) -> np.ndarray:
    return BUCKET_CLASS[np.clip(bucket, 0, len(BUCKET_CLASS) - 1)]


def play_ratio_labels(cand_duration: np.ndarray, exposed: np.ndarray, played: np.ndarray,
                      n_treatments: int, prior: float = 2.0) -> np.ndarray:
    """(m, K) labels: class c_k's play rate among the exposed candidates over the request's overall play
    rate, shrunk towards 1 by ``prior`` pseudo-candidates (a request shows few candidates per class).

    cand_duration (m, V) buckets, exposed and played (m, V) bool (padding: not exposed).
    """
    cls = duration_class(cand_duration)
    exp_f, play_f = exposed.astype(np.float32), (played & exposed).astype(np.float32)
    overall = (play_f.sum(1) + 0.5) / (exp_f.sum(1) + 1.0)  # (m,)
    out = np.empty((len(cls), n_treatments), dtype=np.float32)
    for k, c in enumerate(treatment_classes(n_treatments)):
        n_c = (exp_f * (cls == c)).sum(1)
        p_c = (play_f * (cls == c)).sum(1)
        out[:, k] = (p_c + prior * overall) / (n_c + prior) / overall
    return out


def fic_config(n_responses: int, n_treatments: int, n_durations: int, n_categories: int, emb_dim: int = 16,
               n_experts: int = 4, expert_hidden: tuple[int, ...] = (64, 32),
               tower_hidden: tuple[int, ...] = (16,)) -> DDMNetConfig:
    return DDMNetConfig(n_responses=n_responses, n_parts=len(PARTS), n_durations=n_durations,
                        n_categories=n_categories, emb_dim=emb_dim, n_experts=n_experts, expert_hidden=expert_hidden,
                        tower_hidden=tower_hidden, n_outputs=n_treatments, output_init=1.0)


def fic_net(cfg: DDMNetConfig) -> DDMNet:
    if not cfg.n_outputs:
        raise ValueError("a FIC network has one output per treatment: build its config with fic_config")
    return DDMNet(cfg)
