"""FIC's duration classes and play-ratio labels (pure numpy, no torch: the simulator uses them too).

Treatment k boosts one class of video durations: short, medium, long, then round again.
"""

from __future__ import annotations

import numpy as np

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
