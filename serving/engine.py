"""The decision engine: what one ``/decide`` call does, without HTTP.

A *bundle* (a folder; the BentoML model's files) holds everything the service needs:
``ddm.npz`` (DDM weights as numpy arrays: the service needs no torch), ``serving.json`` (treatments, responses, σ, decision mode, limits, names)
and ``feature_repo/feature_store.yaml`` (which online store to read δ from). The
engine reads δ from the online store (directly in Feast's layout, or through Feast),
weighs responses with DDM, applies the pure decision rule and answers with the numbers
behind each decision. The BentoML service and the
latency benchmark's in-process floor both run exactly this code.

The CDUM family has its own bundle (its own BentoML model): ``cdum.json`` (enabled, ξ,
mode, response weights and scales) and, when enabled, ``fic.npz``. With it, a request may
ask for ``policy: cdum``: CPM's ŷ from the same online-store rows, FIC's r̂ from the
request's lists, and the rule r̂^k·ŷ^k − ŷ^0 > ξ_k (:func:`models.decision.cdum_decide`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from models.decision import INDEPENDENT, SCORED, cdum_decide, check_mode, decide
from serving.schemas import DecideRequest, Decision, LimitError, check_limits

SERVING_FILE = "serving.json"
DDM_FILE = "ddm.npz"
REPO_DIR = "feature_repo"
CDUM_FILE = "cdum.json"
FIC_FILE = "fic.npz"
HMUM, CDUM = "hmum", "cdum"  # the policies (fulcrum.config.FAMILIES; the Bento ships no fulcrum.config)
MODEL_NAME, CDUM_MODEL_NAME = "fulcrum-decision", "fulcrum-cdum"  # BentoML model store: one entry per family


@dataclass
class Timing:
    """Seconds spent in the last call, by step (the latency benchmark's breakdown)."""

    store: float = 0.0
    ddm: float = 0.0
    rule: float = 0.0
    counts: dict = field(default_factory=dict)


class DecisionEngine:
    def __init__(self, bundle: Path, feature_repo: Path | None = None, score_reader: str | None = None,
                 cdum_bundle: Path | None = None):
        from models.ddm_numpy import load_serving_ddm
        from serving.scores import open_scores

        self.bundle = Path(bundle)
        self.spec = json.loads((self.bundle / SERVING_FILE).read_text())
        self.treatments: list[str] = self.spec["treatments"]
        self.responses: list[str] = self.spec["responses"]
        # σ null = treatment never on (the calibration found no σ at which it pays): +∞ for the rule.
        self.sigma = _thresholds(self.spec["sigma"], self.treatments)
        self.mode: str = self.spec.get("mode", INDEPENDENT)  # bundles from before decision modes have none
        check_mode(self.mode)  # a bad bundle fails at start-up, not on the first request
        # Value weights: DDM's per request, or one fixed vector (no request logs, or decision.weights).
        self.weight_source: str = self.spec.get("weight_source", "ddm")
        self.ddm = load_serving_ddm(self.bundle / DDM_FILE) if self.weight_source == "ddm" else None
        self.fixed_weights = None if self.ddm else np.asarray([self.spec["weights"][r] for r in self.responses])
        self.cdum = CDUMPart.load(cdum_bundle, self.treatments, self.responses)
        self.policies = [HMUM, CDUM] if self.cdum.enabled else [HMUM]
        self.default_policy = self.spec.get("default_policy", HMUM) if self.cdum.enabled else HMUM
        repo = Path(feature_repo) if feature_repo else self.bundle / REPO_DIR
        self.online_store = yaml.safe_load((repo / "feature_store.yaml").read_text())["online_store"]
        self.score_reader = score_reader or self.spec.get("score_reader", "direct")
        reader_spec = {**self.spec, "cdum": self.cdum.enabled}  # CDUM on: read CPM's ŷ per spec["arms"] too
        self.scores = open_scores(repo, self.online_store, reader_spec, self.score_reader)
        self.timing = Timing()

    @property
    def ddm_version(self) -> str | None:
        return self.ddm.version if self.ddm is not None else None

    def served(self) -> dict:
        """The publication marker of the online store this engine reads."""
        from fulcrum.online_store import read_marker

        return read_marker(self.online_store, self.spec["project"])

    def status(self) -> dict:
        marker = self.served()
        served = marker.get("served") or {}
        families = {HMUM: {"score_date": served.get("score_date"), "sigma": self.spec["sigma"], "mode": self.mode,
                           "model_versions": {"hum": served.get("model_version"), "ddm": self.ddm_version}}}
        if self.cdum.enabled:
            families[CDUM] = {"score_date": served.get("score_date") if served.get("cpm_version") else None,
                              "xi": self.cdum.spec["xi"], "mode": self.cdum.mode,
                              "model_versions": {"cpm": served.get("cpm_version"), "fic": self.cdum.fic_version}}
        return {
            "ready": marker.get("state") != "never" and bool(served),
            "publication_state": marker.get("state"),
            "publication_generation": served.get("generation"),  # Redis, versioned publication; else None
            "score_date": served.get("score_date"),
            "model_versions": {"hum": served.get("model_version"), "ddm": self.ddm_version},
            "online_store": self.online_store["type"],
            "treatments": self.treatments,
            "responses": self.responses,
            "sigma": self.spec["sigma"],
            "mode": self.mode,
            "weight_source": self.weight_source,
            "weights": self.spec.get("weights"),
            "default_policy": self.default_policy,
            "policies": self.policies,
            "families": families,
        }

    def check(self, requests: list[DecideRequest]) -> None:
        check_limits(requests, self.responses, self.spec["max_items"], self.spec["max_batch"])
        for i, r in enumerate(requests):
            where = f"requests[{i}]." if len(requests) > 1 else ""
            if r.policy is not None and r.policy not in self.policies:
                raise LimitError(f"{where}policy: {r.policy!r} is not in this release (it serves {self.policies})")
            policy = r.policy or self.default_policy
            reader = "FIC" if policy == CDUM else ("DDM" if self.ddm is not None else None)
            if reader and (r.recent is None or r.candidates is None):
                raise LimitError(f"{where}recent, candidates: required: this release's {policy} policy reads the "
                                 f"request's item lists ({reader})")

    def weights(self, requests: list[DecideRequest]) -> np.ndarray:
        """(B, R) value weights: DDM's for the requests' item lists, or the release's fixed ones."""
        from models.ddm_numpy import weights_for_requests

        if self.ddm is None:
            return np.broadcast_to(self.fixed_weights, (len(requests), len(self.responses)))

        return weights_for_requests(self.ddm, [(r.recent, r.candidates) for r in requests])  # DDM's part order

    def decide(self, requests: list[DecideRequest]) -> list[Decision]:
        """Decisions for a batch (limits checked first: raises LimitError)."""
        self.check(requests)
        t0 = time.perf_counter()
        got = self.scores.read([r.user_id for r in requests])
        t1 = time.perf_counter()
        policy = [r.policy or self.default_policy for r in requests]
        if all(p == HMUM for p in policy):  # the usual call: one policy, no regrouping
            w = self.weights(requests)
            t2 = time.perf_counter()
            d = decide(got.delta, w, self.sigma, self.mode)
            out = [self._answer(i, r, d, got) for i, r in enumerate(requests)]
        elif all(p == CDUM for p in policy):
            r_hat = self.cdum.interest(requests)
            t2 = time.perf_counter()
            out = self._cdum_answers(requests, r_hat, got, range(len(requests)))
        else:  # a mixed batch: each policy on its own rows, answers back in request order
            rows = {p: [i for i, q in enumerate(policy) if q == p] for p in (HMUM, CDUM)}
            sub = {p: [requests[i] for i in idx] for p, idx in rows.items()}
            w = self.weights(sub[HMUM])
            r_hat = self.cdum.interest(sub[CDUM])
            t2 = time.perf_counter()
            d = decide(got.delta[rows[HMUM]], w, self.sigma, self.mode)
            answers = dict(zip(rows[HMUM], [self._answer(j, sub[HMUM][j], d, got, rows[HMUM][j])
                                            for j in range(len(rows[HMUM]))], strict=True))
            answers.update(zip(rows[CDUM], self._cdum_answers(sub[CDUM], r_hat, got, rows[CDUM]), strict=True))
            out = [answers[i] for i in range(len(requests))]
        t3 = time.perf_counter()
        self.timing = Timing(store=t1 - t0, ddm=t2 - t1, rule=t3 - t2)
        return out

    def _cdum_answers(self, requests: list[DecideRequest], r_hat: np.ndarray, got, rows) -> list[Decision]:
        """CDUM's rule for ``requests`` (their rows ``rows`` of the store read ``got``)."""
        rows = list(rows)
        mu = got.mu[rows]  # (B, A, R), control first
        c = self.cdum
        d = cdum_decide(r_hat, mu[:, 1:], mu[:, 0], c.xi, c.weights, c.scale, c.mode)
        with np.errstate(divide="ignore", invalid="ignore"):  # rows without scores are NaN: not reported
            rel = (mu[:, 1:] / mu[:, :1] - 1).tolist()  # (B, K, R): ŷ^k / ŷ^0 − 1
        ts, rs = self.treatments, self.responses
        on, value, interest = d.on.tolist(), d.value.tolist(), r_hat.tolist()  # Python floats once, not per cell
        weights = dict(zip(rs, c.weights.tolist(), strict=True))
        out = []
        for j, req in enumerate(requests):
            i = rows[j]
            scored = d.reason[j] == SCORED
            out.append(Decision(
                user_id=req.user_id, policy=CDUM,
                decisions=dict(zip(ts, on[j], strict=True)),
                reason=d.reason[j],
                phi=dict(zip(ts, value[j], strict=True)) if scored else dict.fromkeys(ts),
                sigma=c.spec["xi"], mode=c.mode, weights=weights,
                delta={t: dict(zip(rs, rel[j][k], strict=True)) for k, t in enumerate(ts)} if scored else None,
                interest=dict(zip(ts, interest[j], strict=True)),
                score_date=got.score_date[i] if got.cpm_version[i] else None,
                model_versions={"cpm": got.cpm_version[i], "fic": c.fic_version},
            ))
        return out

    def _answer(self, i: int, req: DecideRequest, d, got, row: int | None = None) -> Decision:
        """HMUM's answer for request ``i`` of the decisions ``d`` (its row ``row`` of the store read, default i)."""
        ts, rs = self.treatments, self.responses
        scored = d.reason[i] == SCORED
        row = i if row is None else row
        return Decision(
            user_id=req.user_id,
            decisions={t: bool(d.on[i, k]) for k, t in enumerate(ts)},
            reason=d.reason[i],
            phi={t: (float(d.phi[i, k]) if scored else None) for k, t in enumerate(ts)},
            sigma={t: self.spec["sigma"][t] for t in ts},
            mode=d.mode,
            weights={r: float(d.weights[i, j]) for j, r in enumerate(rs)},
            delta={t: {r: float(d.delta[i, k, j]) for j, r in enumerate(rs)} for k, t in enumerate(ts)}
            if scored else None,
            score_date=got.score_date[row],
            model_versions={"hum": got.model_version[row], "ddm": self.ddm_version},
        )


def _thresholds(values: dict[str, float | None], treatments: list[str]) -> np.ndarray:
    """(K,) thresholds of a rule; null (never on) becomes +∞."""
    return np.asarray([np.inf if values[t] is None else values[t] for t in treatments], dtype=np.float64)


@dataclass
class CDUMPart:
    """The CDUM family of a release: FIC and the rule's parameters (disabled when the release has none)."""

    enabled: bool = False
    spec: dict = field(default_factory=dict)
    fic: object = None                 # ServingDDM with K outputs (r̂ per treatment)
    xi: np.ndarray | None = None       # (K,) thresholds, +∞ = never on
    weights: np.ndarray | None = None  # (R,) response weights
    scale: np.ndarray | None = None    # (R,) each response's scale (mean ŷ^0 on training users)
    mode: str = INDEPENDENT

    @classmethod
    def load(cls, bundle: Path | None, treatments: list[str], responses: list[str]) -> CDUMPart:
        if bundle is None or not (Path(bundle) / CDUM_FILE).exists():
            return cls()
        spec = json.loads((Path(bundle) / CDUM_FILE).read_text())
        if not spec.get("enabled"):
            return cls(spec=spec)
        from models.ddm_numpy import load_serving_ddm

        if spec["treatments"] != treatments or spec["responses"] != responses:
            raise ValueError(f"the CDUM bundle is for {spec['treatments']} / {spec['responses']}, the release for "
                             f"{treatments} / {responses}")
        fic = load_serving_ddm(Path(bundle) / FIC_FILE)
        check_mode(spec["mode"])
        return cls(True, spec, fic, _thresholds(spec["xi"], treatments),
                   np.asarray([spec["weights"][r] for r in responses], dtype=np.float64),
                   np.asarray([spec["scale"][r] for r in responses], dtype=np.float64), spec["mode"])

    @property
    def fic_version(self) -> str | None:
        return self.fic.version if self.fic is not None else None

    def interest(self, requests: list[DecideRequest]) -> np.ndarray:
        """(B, K) FIC's r̂ from each request's recent and candidate lists."""
        from models.ddm_numpy import list_arrays

        if not requests:
            return np.empty((0, len(self.xi)))
        return self.fic.fast.outputs(*list_arrays([(r.recent, r.candidates) for r in requests], self.fic.responses,
                                                  self.fic.max_items))
