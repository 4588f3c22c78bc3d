"""The decision service's request and response bodies (pydantic), and their limits.

Limits that depend on the deployment (longest list, largest batch) are checked by
:func:`check_limits` with the configured values, so the same models serve any
configuration; everything else is validated by pydantic and answered with a 4xx
that names the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Item ids index embedding tables (unknown ids share one bucket) and must fit the int64
# arrays they become; scores are percentiles. Pydantic checks each entry in its core and
# names the failing one (e.g. ``recent.scores.usage_time.3``): a percentile of 1000 or
# 3.5e38 would otherwise flip a decision or come back as a null φ.
ItemId = Annotated[int, Field(ge=0, lt=2**31)]
Percentile = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ItemList(BaseModel):
    """One list of items (the user's recent videos, or this request's candidates), column-wise."""

    model_config = ConfigDict(extra="forbid")

    duration: list[ItemId] = Field(..., description="duration bucket per item (0 ≤ id < 2^31)")
    category: list[ItemId] = Field(..., description="category id per item (0 ≤ id < 2^31)")
    scores: dict[str, list[Percentile]] = Field(..., description="per response: the item's score percentile in [0, 1]")

    @model_validator(mode="after")
    def _same_lengths(self) -> ItemList:
        n = len(self.duration)
        bad = {"category": len(self.category), **{f"scores.{r}": len(v) for r, v in self.scores.items()}}
        wrong = {k: v for k, v in bad.items() if v != n}
        if wrong:
            raise ValueError(f"every column must have one entry per item ({n} durations); got {wrong}")
        return self

    def __len__(self) -> int:
        return len(self.duration)


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(..., description="the user the request is for")
    recent: ItemList | None = Field(None, description="the user's recent items (DDM and FIC read them; a release "
                                    "with fixed weights serving hmum needs none)")
    candidates: ItemList | None = Field(None, description="this request's candidate items (as recent)")
    policy: Literal["hmum", "cdum"] | None = Field(
        None, description="decision policy for this request: hmum (HUM δ + DDM weights) or cdum (CPM ŷ + FIC "
                          "interest); null: the release's default. Asking for a family the release lacks is a 400")

    @field_validator("user_id")
    @classmethod
    def _int64(cls, v: int) -> int:
        if not -(2**63) <= v < 2**63:
            raise ValueError("user_id must fit in a signed 64-bit integer")
        return v


class DecideBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[DecideRequest] = Field(..., min_length=1)


class Decision(BaseModel):
    """The answer for one request, with every number behind it."""

    user_id: int
    decisions: dict[str, bool] = Field(..., description="per treatment: switch it on for this request")
    reason: str = Field(..., description="scored, or no_scores (unknown user / nothing published: default off)")
    policy: str = Field("hmum", description="the policy that decided: hmum or cdum")
    phi: dict[str, float | None] = Field(..., description="per treatment, the score compared with its threshold "
                                         "(null without scores): hmum Σ_r w_r δ_r; cdum Σ_r w_r (r̂ ŷ^k_r − ŷ^0_r)/s_r")
    sigma: dict[str, float | None]  # the threshold per treatment (hmum σ, cdum ξ); None: never on (+∞)
    mode: str = Field(..., description="decision mode: independent (each treatment on iff φ > σ) or "
                                       "exclusive (at most one: the largest φ above its σ)")
    weights: dict[str, float] = Field(..., description="value weights w_r: DDM's or the release's fixed ones (hmum); "
                                      "the release's response weights λ (cdum)")
    delta: dict[str, dict[str, float]] | None = Field(..., description="per treatment and response (null without "
                                                      "scores); cdum: CPM's ŷ^k_r / ŷ^0_r − 1")
    interest: dict[str, float] | None = Field(None, description="cdum: FIC's real-time interest r̂ per treatment")
    score_date: str | None = Field(..., description="day the user's scores were computed for")
    model_versions: dict[str, str | None] = Field(..., description="hmum: hum (of the user's δ) and ddm; "
                                                  "cdum: cpm (of the user's ŷ) and fic")


class DecideBatchResponse(BaseModel):
    results: list[Decision]


class LimitError(ValueError):
    """A request over the configured limits (answered with 4xx)."""


def check_limits(requests: list[DecideRequest], responses: list[str], max_items: int, max_batch: int) -> None:
    """Deployment limits and the response names the model knows; raises LimitError naming the problem."""
    if len(requests) > max_batch:
        raise LimitError(f"at most {max_batch} requests per batch, got {len(requests)}")
    want = set(responses)
    for i, req in enumerate(requests):
        where = f"requests[{i}]." if len(requests) > 1 else ""
        for part in ("recent", "candidates"):
            items: ItemList | None = getattr(req, part)
            if items is None:  # whether the release needs the lists is the engine's check
                continue
            if len(items) > max_items:
                raise LimitError(f"{where}{part}: at most {max_items} items, got {len(items)}")
            if set(items.scores) != want:
                raise LimitError(f"{where}{part}.scores: expected the responses {sorted(want)}, "
                                 f"got {sorted(items.scores)}")
