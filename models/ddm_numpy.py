"""DDM's forward pass in numpy, for the decision service's one-to-few-request calls.

A single request is a few dozen tiny tensor ops: in torch each costs its dispatch
(~10 µs), so Python-side overhead, not arithmetic, set the 0.3–0.7 ms a request spent
in DDM. The same maths on numpy arrays costs ~1 µs per op. Training and large-batch
scoring keep the torch network; this module copies its weights once and is tested to
give the same weights (float32 rounding aside).

This module imports no torch: the decision service's bundle carries the weights as numpy
arrays (``ddm.npz``, :func:`save_serving_ddm`), so the Bento ships without torch. It also
turns the service's requests (plain lists) into padded arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models.ddm import DDMNet

PARTS = ("recent", "cand")  # item lists per request, in network order (requests.parquet column prefixes)


class NumpyDDM:
    """w (B, R) = normalized ô from padded request arrays, with the weights of a trained :class:`DDMNet`.

    ``state`` is the network's state dict as float32 arrays, ``config`` its ``DDMNetConfig.to_dict()``.
    """

    def __init__(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]):
        sd = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
        self.config = dict(config)
        self.n_durations, self.n_categories = int(config["n_durations"]), int(config["n_categories"])
        self.r, self.m = int(config.get("n_outputs") or config["n_responses"]), int(config["n_experts"])
        expert_hidden, tower_hidden = list(config["expert_hidden"]), list(config["tower_hidden"])
        self.duration = sd["encoder.duration.weight"].copy()
        self.category = sd["encoder.category.weight"].copy()
        self.duration[0] = 0.0  # the unknown bucket adds nothing (as the torch encoder skips row 0)
        self.category[0] = 0.0
        self.score_w, self.score_b = sd["encoder.scores.weight"].T.copy(), sd["encoder.scores.bias"]
        self.first_w, self.first_b = sd["experts.first.weight"].T.copy(), sd["experts.first.bias"]
        self.rest = [(sd[f"experts.rest.{i}.weight"], sd[f"experts.rest.{i}.bias"])
                     for i in range(len(expert_hidden) - 1)]
        self.gate_w, self.gate_b = sd["gates.weight"].T.copy(), sd["gates.bias"]
        self.tower_hidden = [(sd[f"towers.hidden.{i}.weight"], sd[f"towers.hidden.{i}.bias"])
                             for i in range(len(tower_hidden))]
        self.tower_out = (sd["towers.out.weight"], sd["towers.out.bias"])
        self.state = sd  # kept whole: save_serving_ddm writes it back out

    @classmethod
    def from_net(cls, net: DDMNet) -> NumpyDDM:
        return cls({k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}, net.cfg.to_dict())

    @staticmethod
    def _rows(ids: np.ndarray, n_known: int) -> np.ndarray:
        """Raw ids -> table rows: known id k -> k + 1, anything else -> 0 (the zero row)."""
        return np.where((ids >= 0) & (ids < n_known), ids + 1, 0)

    def encode(self, duration: np.ndarray, category: np.ndarray, scores: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
        """(B, P, L) ids, (B, P, L, R) scores, (B, P, L) mask -> pooled lists (B, P*d)."""
        real = mask.astype(np.float32)[..., None]  # (B, P, L, 1): padding weighs 0
        emb = self.duration[self._rows(duration, self.n_durations)] + self.category[
            self._rows(category, self.n_categories)]  # (B, P, L, d)
        score_sum = np.where(mask[..., None], scores, np.float32(0)).sum(axis=2)  # (B, P, R)
        total = (emb * real).sum(axis=2) + score_sum @ self.score_w  # (B, P, d)
        n = real.sum(axis=2)  # (B, P, 1)
        pooled = total / np.maximum(n, 1) + self.score_b * (n > 0)
        return pooled.reshape(len(pooled), -1)

    def __call__(self, duration: np.ndarray, category: np.ndarray, scores: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
        """DDM's value weights w (B, R): the outputs normalized to sum to 1."""
        o = self.outputs(duration, category, scores, mask)
        return o / o.sum(axis=-1, keepdims=True)

    def outputs(self, duration: np.ndarray, category: np.ndarray, scores: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
        """The towers' positive outputs (B, O): DDM's ô, or FIC's r̂ (one per treatment)."""
        s = self.encode(duration, category, scores, mask)  # (B, P*d)
        b = len(s)
        h = np.maximum(s @ self.first_w + self.first_b, 0).reshape(b, self.m, -1)  # (B, M, H0)
        for w, bias in self.rest:  # grouped: (M, in, out)
            h = np.maximum(np.einsum("bmi,mio->bmo", h, w) + bias, 0)
        logits = (s @ self.gate_w + self.gate_b).reshape(b, self.r, self.m)
        g = np.exp(logits - logits.max(axis=-1, keepdims=True))
        g /= g.sum(axis=-1, keepdims=True)  # (B, R, M)
        t = g @ h  # (B, R, H)
        for w, bias in self.tower_hidden:  # grouped: (R, in, out)
            t = np.maximum(np.einsum("bri,rio->bro", t, w) + bias, 0)
        w, bias = self.tower_out
        return np.logaddexp(0, np.einsum("bri,rio->bro", t, w) + bias)[..., 0] + np.float32(1e-4)  # softplus


# --------------------------------------------------------------------------- the service's DDM


@dataclass
class ServingDDM:
    """The numpy DDM and its metadata (version, responses, max_items), as the service loads it."""

    fast: NumpyDDM
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def responses(self) -> list[str]:
        return self.meta["responses"]

    @property
    def max_items(self) -> int:
        return self.meta["max_items"]


def save_serving_ddm(path: Path, fast: NumpyDDM, meta: dict) -> None:
    """Write the weights and metadata as one ``.npz`` (no pickles: loadable with ``allow_pickle=False``)."""
    arrays = {f"w/{k}": v for k, v in fast.state.items()}
    arrays["config"] = np.array(json.dumps(fast.config))
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_serving_ddm(path: Path) -> ServingDDM:
    with np.load(path, allow_pickle=False) as z:
        state = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
        config, meta = json.loads(str(z["config"])), json.loads(str(z["meta"]))
    return ServingDDM(NumpyDDM(state, config), meta)


def _get(items: Any, name: str) -> Any:
    # Mappings (JSON bodies) and objects with attributes (pydantic models) alike.
    return items[name] if isinstance(items, Mapping) else getattr(items, name)


def _put_ids(out: np.ndarray, ids: Sequence[int]) -> None:
    """Copy ids into the front of ``out``; ids beyond int64 become -1 (the unknown bucket), not an error."""
    try:
        out[: len(ids)] = ids
    except OverflowError:
        out[: len(ids)] = [v if -(2**63) <= v < 2**63 else -1 for v in ids]


def list_arrays(
    requests: Sequence[Sequence[Any]], responses: Sequence[str], max_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Requests as plain lists -> padded (duration, category, scores, mask), for the service (no pandas).

    ``requests[i][p]`` is request i's item list for part p (in ``PARTS`` order): a mapping
    or object with ``duration`` and ``category`` (lists of ints) and ``scores`` (response
    name -> list of floats). Lists longer than ``max_items`` keep their first items.
    Shapes: (N, P, L) int64, (N, P, L) int64, (N, P, L, R) float32, (N, P, L) bool.
    """
    n, n_parts, n_resp = len(requests), len(PARTS), len(responses)
    lengths = [[len(_get(items, "duration")) for items in req] for req in requests]
    width = max(1, min(max((max(ls, default=0) for ls in lengths), default=0), max_items))
    duration = np.zeros((n, n_parts, width), np.int64)
    category = np.zeros((n, n_parts, width), np.int64)
    scores = np.zeros((n, n_parts, width, n_resp), np.float32)
    mask = np.zeros((n, n_parts, width), bool)
    for i, req in enumerate(requests):
        if len(req) != n_parts:
            raise ValueError(f"request {i}: expected {n_parts} item lists ({', '.join(PARTS)}), got {len(req)}")
        for p, items in enumerate(req):
            size = lengths[i][p]
            k = min(size, width)
            cat, sc = _get(items, "category"), _get(items, "scores")
            if len(cat) != size:
                raise ValueError(f"request {i}, list {p}: {len(cat)} categories for {size} durations")
            _put_ids(duration[i, p], _get(items, "duration")[:k])
            _put_ids(category[i, p], cat[:k])
            for r, resp in enumerate(responses):
                if resp not in sc or len(sc[resp]) != size:
                    raise ValueError(f"request {i}, list {p}: scores[{resp!r}] missing or not {size} long")
                scores[i, p, :k, r] = sc[resp][:k]
            mask[i, p, :k] = True
    return duration, category, scores, mask


def weights_for_requests(ddm: ServingDDM, requests: Sequence[Sequence[Any]]) -> np.ndarray:
    """:func:`list_arrays` then the numpy forward: the service's one call, (B, R) weights."""
    return ddm.fast(*list_arrays(requests, ddm.responses, ddm.max_items))
