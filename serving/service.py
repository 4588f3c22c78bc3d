"""The BentoML decision service.

    bentoml serve serving.service:FulcrumDecision --host 127.0.0.1 --port 3000

Endpoints:
- ``POST /decide``: one request (flat JSON body, :class:`serving.schemas.DecideRequest`).
- ``POST /decide_batch``: ``{"requests": [...]}``.
- ``GET /ops/health``: liveness with the model versions, the score date served and the
  decision mode.
- ``GET /ops/ready``: 200 once scores are published, else 503 (plus BentoML's /readyz).

The bundle (DDM weights, serving spec, Feast store settings) is the BentoML model
``fulcrum-decision`` declared below; ``bentoml build`` pins the version it resolves to.
Bad input answers 4xx with one body shape (``serving.guard``: 400 naming the field, 413 body
over the limit, 415 not JSON) and one rate-limited log line (``serving.logs``); the process
keeps serving.
"""

from __future__ import annotations

import logging
import os

import bentoml
from bentoml.exceptions import InvalidArgument
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from serving.engine import (  # one BentoML model per family; deploy writes both
    CDUM_MODEL_NAME,
    MODEL_NAME,
)
from serving.guard import RequestGuard
from serving.logs import install_client_error_log
from serving.schemas import (
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    Decision,
    LimitError,
)

# Override with an explicit tag (e.g. in tests); a built Bento pins what "latest" was.
MODEL_TAG = os.environ.get("FULCRUM_DECISION_MODEL", f"{MODEL_NAME}:latest")
CDUM_TAG = os.environ.get("FULCRUM_CDUM_MODEL", f"{CDUM_MODEL_NAME}:latest")


def _cdum_model():
    """The CDUM entry when the store has one (every deploy writes it, enabled or not); else HMUM only."""
    try:
        bentoml.models.get(CDUM_TAG)
    except bentoml.exceptions.NotFound:
        return None
    return bentoml.models.BentoModel(CDUM_TAG)
MAX_BODY_BYTES = int(os.environ.get("FULCRUM_MAX_BODY_BYTES", str(1 << 20)))

log = logging.getLogger("fulcrum.serving")
install_client_error_log()  # a rejected request: one WARNING line, not an ERROR with its traceback
ops = FastAPI(title="Fulcrum operations")


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default) == "1"


# The decision endpoints: exact paths (the guard) and as the tracing middleware matches them.
DECISION_PATHS = ("/decide", "/decide_batch")
DECISION_URLS = [f"{p}$" for p in DECISION_PATHS]


@bentoml.service(
    name="fulcrum_decision",
    traffic={"timeout": 10},
    workers=int(os.environ.get("FULCRUM_SERVE_WORKERS", "1")),
    # Per request on 2 cores: the access log ~1 ms, the tracing middleware ~0.3 ms even with
    # nothing exported; each is configurable (serve.access_log / serve.tracing / serve.metrics).
    logging={"access": {"enabled": _flag("FULCRUM_ACCESS_LOG", "0")}},
    metrics={"enabled": _flag("FULCRUM_METRICS", "1")},
    tracing={} if _flag("FULCRUM_TRACING", "0") else {"excluded_urls": DECISION_URLS},
)
@bentoml.asgi_app(ops, path="/ops")
class FulcrumDecision:
    bundle = bentoml.models.BentoModel(MODEL_TAG)
    cdum_bundle = _cdum_model()

    def __init__(self) -> None:
        from serving.engine import DecisionEngine

        self.engine = DecisionEngine(self.bundle.path, os.environ.get("FULCRUM_FEATURE_REPO") or None,
                                     cdum_bundle=self.cdum_bundle.path if self.cdum_bundle is not None else None)
        import gc

        # Start-up objects (Feast, pydantic, BentoML) live as long as the process: keep them out of
        # the collector's scans. Without it, 8 concurrent clients measured ~15-25 % fewer requests/s
        # (the torch import the service used to carry had hidden this by inflating the thresholds' base).
        gc.freeze()
        log.info("decision service: DDM %s, %s online store, serving %s; policies %s (default %s)",
                 self.engine.ddm_version, self.engine.online_store["type"], self.engine.status()["score_date"],
                 self.engine.policies, self.engine.default_policy)

    def _decide(self, requests: list[DecideRequest]) -> list[Decision]:
        try:
            return self.engine.decide(requests)
        except LimitError as e:
            raise InvalidArgument(str(e)) from None

    # async on purpose: a decision is ~1 ms of CPU, cheaper to run on the event loop than to
    # hand to BentoML's thread pool (measured: ~0.6 ms less per request). Parallelism comes
    # from worker processes (serve.workers). Outputs are typed models: with `-> dict` BentoML
    # regenerates a JSON schema for every response (~0.8 ms, seen with py-spy).
    @bentoml.api(input_spec=DecideRequest)
    async def decide(self, **params) -> Decision:
        return self._decide([DecideRequest.model_construct(**params)])[0]

    @bentoml.api(input_spec=DecideBatchRequest)
    async def decide_batch(self, **params) -> DecideBatchResponse:
        return DecideBatchResponse(results=self._decide(params["requests"]))

    @ops.get("/health")
    def health(self) -> dict:
        return {"status": "ok", **self.engine.status()}

    @ops.get("/ready")
    def ready(self):
        status = self.engine.status()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)


FulcrumDecision.add_asgi_middleware(RequestGuard, max_bytes=MAX_BODY_BYTES, paths=DECISION_PATHS)
