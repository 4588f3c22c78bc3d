"""Fulcrum's Feast objects: the user entity, the daily feature view, the δ score view
and the decision service's feature service.

The views are sized from the collected dataset: ``user_features`` gets one field per
feature in ``<data>/rct/manifest.json`` (typed from the parquet schema), and
``uplift_scores`` one ``delta__<treatment>__<response>`` field per cell.

Two ways in:

- Fulcrum (``pipelines/feature_store.py``) loads this file under
  ``DEFINITIONS_MODULE`` and calls :func:`build_definitions` with its configured paths.
- The ``feast`` CLI (``feast -c feature_repo apply``, after Fulcrum has generated
  ``feature_store.yaml``) imports it under another name; the module-level objects at
  the bottom are then built from the project's ``params.yaml`` (or ``$FULCRUM_PARAMS``).

Only Feast, pyarrow and Fulcrum's light config/schema modules are imported here.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64, String, UnixTimestamp

from fulcrum import schema as S
from pipelines import feature_store as fs


class Definitions(NamedTuple):
    user: Entity
    user_features_source: FileSource
    user_features: FeatureView
    uplift_scores_source: FileSource
    uplift_scores: FeatureView
    decision_service: FeatureService


def _categorical_type(name: str, arrow_type: pa.DataType):
    if pa.types.is_integer(arrow_type):
        return Int64
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return String
    raise ValueError(f"categorical feature {name!r} has parquet type {arrow_type}; expected integers or text")


def feature_fields(manifest: S.Manifest, features_file: Path) -> list[Field]:
    """One Feast field per manifest feature: categorical -> Int64/String by the parquet type, numeric -> Float32.

    The snapshot's own ``event_timestamp`` is exposed too, so a point-in-time join
    says which snapshot it used (the pandas as-of join carries the same column).
    """
    arrow = pq.read_schema(features_file)
    fields = [Field(name=S.EVENT_TS, dtype=UnixTimestamp)]
    for spec in manifest.features:
        if spec.kind == "categorical":
            fields.append(Field(name=spec.name, dtype=_categorical_type(spec.name, arrow.field(spec.name).type)))
        else:
            fields.append(Field(name=spec.name, dtype=Float32))
    return fields


def build_definitions(
    rct_dir: Path,
    scores_file: Path,
    ttl_days: int = 60,
    scores_ttl_days: int = 7,
    manifest: S.Manifest | None = None,
    cdum: bool = False,
) -> Definitions:
    """The Feast objects over ``<rct_dir>/features.parquet`` and ``scores_file`` (absolute paths).

    ``cdum``: the score view also carries CPM's outcomes ``mu__<arm>__<response>`` and
    ``cpm_version`` (the CDUM family, published in the same rows as HUM's δ).
    """
    man = manifest or S.Manifest.read(rct_dir)
    features_file = Path(rct_dir) / S.FEATURES_FILE
    user = Entity(
        name=fs.USER_ENTITY, join_keys=[S.USER_ID], value_type=ValueType.INT64,
        description="a platform user (the experiment's randomization unit)",
    )
    features_source = FileSource(
        name=f"{fs.USER_FEATURES}_source", path=str(features_file), timestamp_field=S.EVENT_TS,
        description="daily feature snapshots written by the collect stage",
    )
    user_features = FeatureView(
        name=fs.USER_FEATURES,
        entities=[user],
        ttl=timedelta(days=ttl_days),
        schema=[Field(name=S.USER_ID, dtype=Int64), *feature_fields(man, features_file)],
        source=features_source,
        online=True,
        description="user features as of each daily snapshot (end of day, UTC)",
    )
    scores_source = FileSource(
        name=f"{fs.UPLIFT_SCORES}_source", path=str(scores_file), timestamp_field=S.EVENT_TS,
        description="per-user relative effects written by the scoring stage",
    )
    uplift_scores = FeatureView(
        name=fs.UPLIFT_SCORES,
        entities=[user],
        ttl=timedelta(days=scores_ttl_days),
        schema=[
            Field(name=S.USER_ID, dtype=Int64),
            *(Field(name=name, dtype=Float32) for name in fs.float_features(man, cdum)),
            *(Field(name=name, dtype=String) for name in fs.version_features(cdum)),
        ],
        source=scores_source,
        online=True,
        description="δ per treatment × response: the model's relative effect for each user",
    )
    decision_service = FeatureService(
        name=fs.DECISION_SERVICE, features=[uplift_scores],
        description="what the online decision module reads per request",
    )
    return Definitions(user, features_source, user_features, scores_source, uplift_scores, decision_service)


def _from_params() -> Definitions:
    """Definitions for the feast CLI: paths from the project's params.yaml."""
    from fulcrum.config import DEFAULT_PARAMS, PARAMS_ENV, load_config

    root = Path(__file__).resolve().parents[1]
    params = Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))
    cfg = load_config(params if params.is_absolute() else root / params)
    return build_definitions(
        cfg.paths.rct_dir(root).resolve(), fs.scores_path(cfg, root).resolve(),
        cfg.feast.ttl_days, cfg.feast.scores_ttl_days, cdum=cfg.cdum_on,
    )


if __name__ != fs.DEFINITIONS_MODULE:
    (
        user,
        user_features_source,
        user_features,
        uplift_scores_source,
        uplift_scores,
        decision_service,
    ) = _from_params()
