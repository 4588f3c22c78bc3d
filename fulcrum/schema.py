"""The canonical RCT dataset every source writes and every later stage reads.

Files in ``<data>/rct/``:

- ``features.parquet``   user_id, event_timestamp, <feature columns>: dated daily snapshots
- ``experiment.parquet`` user_id, assignment_ts, arm, arm_index, propensity, <responses>;
  it may also hold users of combined arms (several treatments on together, named
  e.g. ``t1+t2``), with ``arm_index >= len(manifest.arms)`` (their position in
  ``Manifest.all_arms``). Models train on the single arms only; combined-arm users
  serve offline policy evaluation.
- ``requests.parquet``   request_id, user_id, request_ts, recent_* / cand_* list columns
- ``truth.parquet``      simulator only: user_id, mu__<arm>__<response> (expected outcomes),
  for every arm of ``Manifest.all_arms`` (combined arms included)
- ``requests_truth.parquet`` simulator only: request_id, true_mix__<response>
- ``manifest.json``      this module's :class:`Manifest`

Timestamps are ``timestamp[us, UTC]`` (Feast's DuckDB store rejects nanoseconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fulcrum.config import CONTROL

USER_ID = "user_id"
EVENT_TS = "event_timestamp"
ASSIGN_TS = "assignment_ts"
ARM = "arm"
ARM_INDEX = "arm_index"
PROPENSITY = "propensity"
REQUEST_ID = "request_id"
REQUEST_TS = "request_ts"

FEATURES_FILE = "features.parquet"
EXPERIMENT_FILE = "experiment.parquet"
REQUESTS_FILE = "requests.parquet"
TRUTH_FILE = "truth.parquet"
REQUESTS_TRUTH_FILE = "requests_truth.parquet"
MANIFEST_FILE = "manifest.json"

def truth_column(arm: str, response: str) -> str:
    return f"mu__{arm}__{response}"


def mix_column(response: str) -> str:
    return f"true_mix__{response}"


def interest_column(treatment: str) -> str:
    """requests_truth.parquet (duration-mix scenario): the request's true real-time interest r_k."""
    return f"true_interest__{treatment}"


PLAYED = "cand_played"  # requests.parquet (duration-mix scenario): 0/1 list, was the candidate played through


def item_columns(part: str, responses: list[str]) -> list[str]:
    """List columns for one request part (``recent`` or ``cand``)."""
    return [f"{part}_duration", f"{part}_category"] + [f"{part}_score__{r}" for r in responses]


class FeatureSpec(BaseModel):
    name: str
    kind: Literal["categorical", "numeric"]
    levels: list[str] | None = Field(None, description="labels of integer-coded categories")


class Manifest(BaseModel):
    """What a collected dataset holds; later stages size models from it."""

    source: Literal["simulator", "logs"]
    arms: list[str] = Field(..., description="single arms, control first (what models train on)")
    combined_arms: list[str] = Field(
        default_factory=list,
        description="RCT arms switching several treatments on together (e.g. 't1+t2'); "
        "their arm_index follows the single arms",
    )
    responses: list[str]
    features: list[FeatureSpec]
    n_users: int
    n_experiment_rows: int
    n_feature_rows: int
    n_requests: int = 0
    has_truth: bool = False
    has_requests: bool = False
    first_snapshot: str
    last_snapshot: str

    @property
    def treatments(self) -> list[str]:
        return [a for a in self.arms if a != CONTROL]

    @property
    def all_arms(self) -> list[str]:
        """Every RCT arm in arm_index order: the single arms, then the combined ones."""
        return [*self.arms, *self.combined_arms]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the collect stage first (fulcrum collect)")
        return cls.model_validate_json(path.read_text())
