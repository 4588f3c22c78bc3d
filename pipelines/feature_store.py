"""The Feast feature store: its generated ``feature_store.yaml``, ``apply`` and the store itself.

``params.yaml`` (section ``feast``) is the only place the store is configured: the
profile picks the online store and registry, and :func:`write_feature_store_yaml`
turns it into ``<root>/<feast.repo_path>/feature_store.yaml`` with absolute paths,
so Feast finds everything from any working directory.

The Feast objects themselves live in ``feature_repo/definitions.py``. Fulcrum loads
that file under :data:`DEFINITIONS_MODULE` and calls its ``build_definitions`` with
the configured paths; the ``feast`` CLI imports it under another name and gets
module-level objects built from ``params.yaml`` instead.

Feast is imported inside the functions (it costs seconds); the names and the scores
schema below are plain Python so the feature repo and later stages can share them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.online_store import (  # noqa: F401 - the online store's names, re-exported for the stages
    CPM_VERSION,
    DECISION_SERVICE,
    MODEL_VERSION,
    SCORE_DATE,
    UPLIFT_SCORES,
    delta_feature,
    mu_features,
    sqlite_create,
)
from fulcrum.secrets import REDIS_PASSWORD_ENV, REGISTRY_URL_ENV, env_secret

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("fulcrum")

STORE_YAML = "feature_store.yaml"
DEFINITIONS_FILE = Path(__file__).resolve().parents[1] / "feature_repo" / "definitions.py"
# The module name Fulcrum loads the definitions under; any other name means the feast CLI.
DEFINITIONS_MODULE = "fulcrum_feature_definitions"

USER_ENTITY = "user"
USER_FEATURES = "user_features"
SCORES_FILE = "scores.parquet"


def delta_features(manifest: S.Manifest) -> list[str]:
    return [delta_feature(t, r) for t in manifest.treatments for r in manifest.responses]


def cpm_features(manifest: S.Manifest, cdum: bool) -> list[str]:
    """CPM's published outcomes ŷ^a_r (CDUM family), or none when the cycle runs HMUM only."""
    return mu_features(manifest.arms, manifest.responses) if cdum else []


def float_features(manifest: S.Manifest, cdum: bool = False) -> list[str]:
    """Every float feature of a score snapshot: HUM's δ, then CPM's ŷ when CDUM runs."""
    return [*delta_features(manifest), *cpm_features(manifest, cdum)]


def version_features(cdum: bool = False) -> list[str]:
    """The per-publication string features: the score date and each family's model version."""
    return [SCORE_DATE, MODEL_VERSION, *([CPM_VERSION] if cdum else [])]


def scores_schema(manifest: S.Manifest, cdum: bool = False) -> pa.Schema:
    """The schema of ``<data>/scores/scores.parquet``, which the scoring stage writes."""
    return pa.schema(
        [
            pa.field(S.USER_ID, pa.int64()),
            pa.field(S.EVENT_TS, pa.timestamp("us", tz="UTC")),
            *(pa.field(name, pa.float32()) for name in float_features(manifest, cdum)),
            *(pa.field(name, pa.string()) for name in version_features(cdum)),
        ]
    )


def scores_path(cfg: FulcrumConfig, root: Path) -> Path:
    return cfg.paths.scores_dir(root) / SCORES_FILE


def repo_dir(cfg: FulcrumConfig, root: Path) -> Path:
    return _absolute(root, cfg.feast.repo_path)


def _absolute(root: Path, path: str | Path) -> Path:
    return (Path(root) / path).resolve()


# --------------------------------------------------------------------------- feature_store.yaml


def feature_store_settings(cfg: FulcrumConfig, root: Path) -> dict[str, Any]:
    """The content of ``feature_store.yaml`` for the configured profile (absolute paths)."""
    fc = cfg.feast
    doc: dict[str, Any] = {"project": fc.project, "provider": "local"}
    if fc.profile == "embedded":
        prof = fc.embedded
        doc["registry"] = {"registry_type": "file", "path": str(_absolute(root, prof.registry_path))}
        doc["online_store"] = {"type": "sqlite", "path": str(_absolute(root, prof.online_path))}
    else:
        prod = fc.production
        # Secrets stay placeholders here (Feast and Fulcrum expand them from the environment when
        # they connect): this file is bundled into the Bento and must not carry them.
        if env_secret(REGISTRY_URL_ENV):
            doc["registry"] = {"registry_type": "sql", "path": "${" + REGISTRY_URL_ENV + "}"}
        elif prod.registry_url:
            doc["registry"] = {"registry_type": "sql", "path": prod.registry_url}
        else:
            doc["registry"] = {"registry_type": "file", "path": str(_absolute(root, prod.registry_path))}
        online: dict[str, Any] = {
            "type": "redis",
            "connection_string": f"{prod.redis_connection_string},db={prod.redis_db}"
            + (",password=${" + REDIS_PASSWORD_ENV + "}" if env_secret(REDIS_PASSWORD_ENV) else ""),
        }
        if prod.redis_key_ttl_seconds is not None:
            online["key_ttl_seconds"] = prod.redis_key_ttl_seconds
        doc["online_store"] = online
    doc["offline_store"] = {"type": getattr(fc, fc.profile).offline_store}
    doc["entity_key_serialization_version"] = 3
    return doc


def write_feature_store_yaml(cfg: FulcrumConfig, root: Path) -> Path:
    """Write ``<root>/<feast.repo_path>/feature_store.yaml`` for the configured profile.

    The file is rewritten only when its content changes; the folders of the local
    registry and SQLite store are created.
    """
    doc = feature_store_settings(cfg, root)
    text = (
        f"# Generated from the `feast` section of params.yaml (profile: {cfg.feast.profile})\n"
        "# by pipelines/feature_store.py. Edit params.yaml, not this file.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    path = repo_dir(cfg, root) / STORE_YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    for section in ("registry", "online_store"):
        part = doc[section]
        if part.get("registry_type", part.get("type")) in ("file", "sqlite"):
            Path(part["path"]).parent.mkdir(parents=True, exist_ok=True)
    if doc["online_store"]["type"] == "sqlite":
        # Created here, before Feast opens it, so the page size can still be chosen.
        sqlite_create(doc["online_store"]["path"], cfg.feast.embedded.sqlite_page_size)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# --------------------------------------------------------------------------- the store


def load_definitions() -> ModuleType:
    """``feature_repo/definitions.py`` as a module, loaded without the CLI's module-level objects."""
    spec = importlib.util.spec_from_file_location(DEFINITIONS_MODULE, DEFINITIONS_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Feast definitions from {DEFINITIONS_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definitions(cfg: FulcrumConfig, root: Path, manifest: S.Manifest | None = None) -> list:
    """The Feast objects for this configuration's dataset (entity, sources, views, service)."""
    defs = load_definitions().build_definitions(
        rct_dir=cfg.paths.rct_dir(root).resolve(),
        scores_file=scores_path(cfg, root).resolve(),
        ttl_days=cfg.feast.ttl_days,
        scores_ttl_days=cfg.feast.scores_ttl_days,
        manifest=manifest,
        cdum=cfg.cdum_on,
    )
    return list(defs)


def get_store(cfg: FulcrumConfig, root: Path) -> FeatureStore:
    """The Feast store of the configured profile (its yaml written if missing or stale; nothing applied)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(write_feature_store_yaml(cfg, root).parent))


def _stale(store: FeatureStore, objects: list) -> list:
    """Registered objects of this project that ``objects`` no longer define (what `feast apply` deletes)."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    wanted: dict[type, set[str]] = {Entity: set(), FeatureView: set(), FeatureService: set(), DataSource: set()}
    for obj in objects:
        for kind in wanted:
            if isinstance(obj, kind):
                wanted[kind].add(obj.name)
    registered = [
        *(e for e in store.list_entities() if e.name != "__dummy"),
        *store.list_feature_views(),
        *store.list_feature_services(),
        *store.list_data_sources(),
    ]
    return [
        obj for obj in registered
        if any(isinstance(obj, kind) and obj.name not in names for kind, names in wanted.items())
    ]


def apply(cfg: FulcrumConfig, root: Path, manifest: S.Manifest | None = None) -> FeatureStore:
    """``feast apply`` in-process: write the yaml, register the definitions, drop what they no longer hold.

    Idempotent: applying unchanged definitions changes nothing. The scores file need
    not exist yet (Feast reads a source only when it is queried or materialized).
    """
    store = get_store(cfg, root)
    objects = definitions(cfg, root, manifest)
    stale = _stale(store, objects)
    store.apply(objects, objects_to_delete=stale, partial=False)
    if stale:
        log.info("feast: removed %s", ", ".join(f"{type(o).__name__} {o.name}" for o in stale))
    return store
