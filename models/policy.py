"""Policies as data: what each unit would get, for offline evaluation (spec §5). Pure numpy.

A :class:`Policy` is a small, serializable description (kind + parameters); applied to
:class:`Units` it gives, per unit, which treatments are switched on: (n, K) bool. Through
:func:`to_arms` those sets become RCT arm indices: {} -> control, {k} -> arm k, and a
set of several treatments -> the RCT's combined arm with exactly that set, or
``NOT_EVALUABLE`` when the RCT has no such arm (reported as coverage, never guessed).

The unit is the user: responses are per user over the experiment window. A user's
value weights are the mean of DDM's weights over their logged requests; users without
request logs get the population default (the mean weight over all logged requests).

Built-in kinds:

- ``control``: nothing on.
- ``all``: treatment ``treatment`` for everyone (or a combination, e.g. "t1+t2").
- ``random``: another policy's decisions shuffled across users (the same treatment
  rates, no personalization); resolved by :func:`decide_all`.
- ``fixed_weight``: φ^k = Σ_r λ_r δ_r^k with one global λ (``weights``), φ^k > σ_k.
- ``greedy``: δ_r^k > σ_k for one response r (``response``).
- ``hmum``: φ^k = Σ_r w_r δ_r^k with each user's DDM weights, φ^k > σ_k (spec §2.2).
- ``oracle``: the HMUM rule on the true δ and the true interest mix (simulated data).
- ``cdum``: CDUM's gain Σ_r λ_r (r̂^k ŷ^k_r − ŷ^0_r)/s_r > ξ_k (spec §3; ``Units.cdum_value``).
- ``cpm``: the same rule with r̂ = 1, CPM alone without FIC's real-time correction.

``mode`` is the decision mode of :func:`models.decision.apply_mode` (independent:
each treatment on its own rule; exclusive: at most one, the best φ^k above σ_k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from fulcrum.ope import NOT_EVALUABLE
from models.decision import apply_mode

KINDS = ("control", "all", "random", "fixed_weight", "greedy", "hmum", "oracle", "cdum", "cpm")


@dataclass(frozen=True)
class Units:
    """What policies see about n units, K treatments and R responses."""

    delta: np.ndarray                 # (n, K, R) model δ; a row of NaN = no scores
    weights: np.ndarray               # (n, R) per-user DDM value weights (rows sum to 1)
    treatments: Sequence[str]
    responses: Sequence[str]
    true_delta: np.ndarray | None = None    # (n, K, R) simulated data only
    true_weights: np.ndarray | None = None  # (n, R) true interest mix, simulated data only
    cdum_value: np.ndarray | None = None    # (n, K) CDUM's gain with FIC's r̂ (CDUM family only)
    cpm_value: np.ndarray | None = None     # (n, K) the same gain with r̂ = 1

    def __post_init__(self) -> None:
        n, k, r = self.delta.shape
        if (k, r) != (len(self.treatments), len(self.responses)) or self.weights.shape != (n, r):
            raise ValueError(f"units do not fit: delta {self.delta.shape}, weights {self.weights.shape}, "
                             f"{len(self.treatments)} treatments, {len(self.responses)} responses")

    @property
    def n(self) -> int:
        return self.delta.shape[0]

    def take(self, rows: np.ndarray) -> Units:
        def sub(a):
            return None if a is None else a[rows]
        return replace(self, delta=self.delta[rows], weights=self.weights[rows],
                       true_delta=sub(self.true_delta), true_weights=sub(self.true_weights),
                       cdum_value=sub(self.cdum_value), cpm_value=sub(self.cpm_value))


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str
    sigma: tuple[float, ...] | None = None     # per treatment; None = 0
    mode: str = "independent"
    treatment: str | None = None               # kind "all"
    response: str | None = None                # kind "greedy"
    weights: tuple[float, ...] | None = None   # kind "fixed_weight": λ per response
    like: str | None = None                    # kind "random": whose treatment rates it matches
    seed: int = 0                              # kind "random"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"policy {self.name!r}: unknown kind {self.kind!r}, use one of {KINDS}")
        needs = {"all": "treatment", "greedy": "response", "fixed_weight": "weights", "random": "like"}
        if self.kind in needs and getattr(self, needs[self.kind]) is None:
            raise ValueError(f"policy {self.name!r} of kind {self.kind!r} needs {needs[self.kind]!r}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    def with_sigma(self, sigma: Sequence[float], name: str | None = None) -> Policy:
        return replace(self, sigma=tuple(float(s) for s in sigma), name=name or self.name)

    def scores(self, units: Units) -> np.ndarray:
        """(n, K) the score each treatment's rule compares with σ_k (φ for the weighted kinds)."""
        if self.kind == "greedy":
            return units.delta[:, :, list(units.responses).index(self.response)]
        if self.kind == "fixed_weight":
            return np.einsum("nkr,r->nk", units.delta, np.asarray(self.weights, dtype=np.float64))
        if self.kind == "hmum":
            return np.einsum("nkr,nr->nk", units.delta, units.weights)
        if self.kind == "oracle":
            if units.true_delta is None or units.true_weights is None:
                raise ValueError("the oracle policy needs the true δ and interest mix (simulated data)")
            return np.einsum("nkr,nr->nk", units.true_delta, units.true_weights)
        if self.kind in ("cdum", "cpm"):
            value = units.cdum_value if self.kind == "cdum" else units.cpm_value
            if value is None:
                raise ValueError(f"policy {self.name!r} needs CPM's outcomes and FIC's interest (families: cdum)")
            return value
        raise ValueError(f"policy {self.name!r} of kind {self.kind!r} has no scores")

    def decide(self, units: Units) -> np.ndarray:
        """(n, K) bool: the treatments switched on for each unit (kind "random" needs decide_all)."""
        n, k, _ = units.delta.shape
        if self.kind == "control":
            return np.zeros((n, k), bool)
        if self.kind == "all":  # one treatment, or a combination such as "t1+t2"
            on = np.zeros((n, k), bool)
            for member in self.treatment.split("+"):
                on[:, list(units.treatments).index(member)] = True
            return on
        if self.kind == "random":
            raise ValueError(f"policy {self.name!r} (random) is resolved by decide_all, beside {self.like!r}")
        sigma = np.zeros(k) if self.sigma is None else np.asarray(self.sigma, dtype=np.float64)
        return apply_mode(self.scores(units), sigma, self.mode)


def decide_all(policies: Sequence[Policy], units: Units) -> dict[str, np.ndarray]:
    """Decisions (n, K) of every policy, by name; "random" policies after the one they match."""
    out: dict[str, np.ndarray] = {}
    for p in sorted(policies, key=lambda p: p.kind == "random"):
        if p.kind == "random":
            if p.like not in out:
                raise ValueError(f"policy {p.name!r} matches {p.like!r}, which is not in the list")
            out[p.name] = out[p.like][np.random.default_rng(p.seed).permutation(units.n)]
        else:
            out[p.name] = p.decide(units)
    return {p.name: out[p.name] for p in policies}


def arm_lookup(treatments: Sequence[str], arms: Sequence[str], combined: Sequence[str] = ()) -> np.ndarray:
    """(2^K,) arm index of every treatment set (bit k = treatment k on), NOT_EVALUABLE where none.

    ``arms``: single arms, control first, then the treatments; ``combined``: names like
    "t1+t2" of the RCT's combined arms, indexed after the single arms.
    """
    k = len(treatments)
    if list(arms[1:]) != list(treatments):
        raise ValueError(f"arms {list(arms)} must be control followed by the treatments {list(treatments)}")
    table = np.full(2**k, NOT_EVALUABLE, np.int64)
    table[0] = 0
    for j in range(k):
        table[1 << j] = 1 + j
    for c, name in enumerate(combined):
        members = name.split("+")
        unknown = [m for m in members if m not in treatments]
        if unknown:
            raise ValueError(f"combined arm {name!r} names unknown treatments {unknown}")
        code = sum(1 << list(treatments).index(m) for m in members)
        table[code] = len(arms) + c
    return table


def to_arms(on: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """(n, K) decisions -> (n,) RCT arm indices through :func:`arm_lookup`'s table."""
    code = (on.astype(np.int64) << np.arange(on.shape[1])).sum(1)
    return lookup[code]


def combined_outcomes(mu: np.ndarray, treatments: Sequence[str], combined: Sequence[str]) -> np.ndarray:
    """Predicted outcomes under combined arms appended to ``mu`` (n, 1+K, R) -> (n, 1+K+C, R).

    The model knows single treatments only; a set S is taken to act multiplicatively,
    μ̂_S = μ̂_0 · Π_{k∈S} (1 + δ̂_k). Only the doubly robust estimator's direct part uses it,
    and in an RCT DR stays unbiased whatever μ̂ is: a wrong guess costs variance, not bias.
    """
    if not combined:
        return mu
    ratio = mu[:, 1:] / mu[:, :1]  # (n, K, R) = 1 + δ̂
    extra = []
    for name in combined:
        idx = [list(treatments).index(m) for m in name.split("+")]
        extra.append(mu[:, 0] * ratio[:, idx].prod(1))
    return np.concatenate([mu, np.stack(extra, axis=1)], axis=1)


def treated_share(on: np.ndarray) -> float:
    """Share of units with at least one treatment on."""
    return float(on.any(1).mean()) if len(on) else 0.0
