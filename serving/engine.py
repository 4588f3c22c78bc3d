"""The decision engine: what one ``/decide`` call does, without HTTP.

A *bundle* (a folder; the BentoML model's files) holds everything the service needs:
``ddm.npz`` (DDM weights as numpy arrays: the service needs no torch), ``serving.json`` (treatments, responses, σ, decision mode, limits, names)
and ``feature_repo/feature_store.yaml`` (which online store to read δ from). The
engine reads δ from the online store (directly in Feast's layout, or through Feast),
weighs responses with DDM, applies the pure decision rule and answers with the numbers
behind each decision. The BentoML service and the
latency benchmark's in-process floor both run exactly this code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from models.decision import INDEPENDENT, check_mode, decide
from serving.schemas import DecideRequest, Decision, check_limits

SERVING_FILE = "serving.json"
DDM_FILE = "ddm.npz"
REPO_DIR = "feature_repo"


@dataclass
class Timing:
    """Seconds spent in the last call, by step (the latency benchmark's breakdown)."""

    store: float = 0.0
    ddm: float = 0.0
    rule: float = 0.0
    counts: dict = field(default_factory=dict)


class DecisionEngine:
    def __init__(self, bundle: Path, feature_repo: Path | None = None, score_reader: str | None = None):
        from models.ddm_numpy import load_serving_ddm
        from serving.scores import open_scores

        self.bundle = Path(bundle)
        self.spec = json.loads((self.bundle / SERVING_FILE).read_text())
        self.treatments: list[str] = self.spec["treatments"]
        self.responses: list[str] = self.spec["responses"]
        # σ null = treatment never on (the calibration found no σ at which it pays): +∞ for the rule.
        self.sigma = np.asarray([np.inf if self.spec["sigma"][t] is None else self.spec["sigma"][t]
                                 for t in self.treatments], dtype=np.float64)
        self.mode: str = self.spec.get("mode", INDEPENDENT)  # bundles from before decision modes have none
        check_mode(self.mode)  # a bad bundle fails at start-up, not on the first request
        self.ddm = load_serving_ddm(self.bundle / DDM_FILE)
        repo = Path(feature_repo) if feature_repo else self.bundle / REPO_DIR
        self.online_store = yaml.safe_load((repo / "feature_store.yaml").read_text())["online_store"]
        self.score_reader = score_reader or self.spec.get("score_reader", "direct")
        self.scores = open_scores(repo, self.online_store, self.spec, self.score_reader)
        self.timing = Timing()

    @property
    def ddm_version(self) -> str:
        return self.ddm.version

    def served(self) -> dict:
        """The publication marker of the online store this engine reads."""
        from fulcrum.online_store import read_marker

        return read_marker(self.online_store, self.spec["project"])

    def status(self) -> dict:
        marker = self.served()
        served = marker.get("served") or {}
        return {
            "ready": marker.get("state") != "never" and bool(served),
            "publication_state": marker.get("state"),
            "score_date": served.get("score_date"),
            "model_versions": {"hum": served.get("model_version"), "ddm": self.ddm_version},
            "online_store": self.online_store["type"],
            "treatments": self.treatments,
            "responses": self.responses,
            "sigma": self.spec["sigma"],
            "mode": self.mode,
        }

    def check(self, requests: list[DecideRequest]) -> None:
        check_limits(requests, self.responses, self.spec["max_items"], self.spec["max_batch"])

    def weights(self, requests: list[DecideRequest]) -> np.ndarray:
        """(B, R) DDM value weights for the requests' item lists."""
        from models.ddm_numpy import weights_for_requests

        return weights_for_requests(self.ddm, [(r.recent, r.candidates) for r in requests])  # DDM's part order

    def decide(self, requests: list[DecideRequest]) -> list[Decision]:
        """Decisions for a batch (limits checked first: raises LimitError)."""
        self.check(requests)
        t0 = time.perf_counter()
        got = self.scores.read([r.user_id for r in requests])
        t1 = time.perf_counter()
        w = self.weights(requests)
        t2 = time.perf_counter()
        d = decide(got.delta, w, self.sigma, self.mode)
        out = [self._answer(i, r, d, got) for i, r in enumerate(requests)]
        t3 = time.perf_counter()
        self.timing = Timing(store=t1 - t0, ddm=t2 - t1, rule=t3 - t2)
        return out

    def _answer(self, i: int, req: DecideRequest, d, got) -> Decision:
        ts, rs = self.treatments, self.responses
        scored = d.reason[i] == "scored"
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
            score_date=got.score_date[i],
            model_versions={"hum": got.model_version[i], "ddm": self.ddm_version},
        )
