"""Example request bodies (the README, the deploy smoke test, the latency benchmark)."""

from __future__ import annotations

import numpy as np


def item_list(n: int, responses: list[str], rng: np.random.Generator) -> dict:
    return {
        "duration": rng.integers(0, 5, n).tolist(),
        "category": rng.integers(0, 30, n).tolist(),
        "scores": {r: np.round(rng.random(n), 4).tolist() for r in responses},
    }


def example_request(user_id: int, responses: list[str], n_recent: int = 10, n_candidates: int = 20,
                    seed: int = 0, lists: bool = True) -> dict:
    """A /decide body with random recent and candidate items shaped like the simulator's.

    ``lists=False``: the user id only, what a release with fixed weights needs (no DDM, no FIC).
    """
    if not lists:
        return {"user_id": int(user_id)}
    rng = np.random.default_rng(seed)
    return {"user_id": int(user_id), "recent": item_list(n_recent, responses, rng),
            "candidates": item_list(n_candidates, responses, rng)}
