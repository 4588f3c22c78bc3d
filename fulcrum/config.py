"""One typed configuration for DVC stages, Airflow and the CLI.

Everything is read from ``params.yaml`` (the file DVC tracks as params) and
validated with pydantic. Backends are chosen with a ``type`` field, Feast-style:
``source.type: simulator`` or ``source.type: logs``.
"""

from __future__ import annotations

import os
from datetime import date
from datetime import date as Date  # a field below is itself named `date`
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fulcrum.secrets import (
    AIRFLOW_DB_ENV,
    REDIS_PASSWORD_ENV,
    REGISTRY_URL_ENV,
    SECRETS_FILE,
    inline_secret,
    redact,
)

CONTROL = "control"
DEFAULT_PARAMS = "params.yaml"
PARAMS_ENV = "FULCRUM_PARAMS"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has an invalid value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sources


class RequestSimConfig(_Strict):
    """Request logs for the online decision module (DDM)."""

    user_share: float = Field(0.1, ge=0, le=1, description="share of users that get request logs (0: none; the "
                              "decision then uses fixed weights)")
    per_user_mean: float = Field(4.0, gt=0, description="mean requests per user over the experiment")
    recent_len: int = Field(10, ge=1, le=200, description="recently interacted videos per request")
    candidates: int = Field(20, ge=2, le=500, description="candidate videos per request")
    exposed: int = Field(6, ge=1, description="candidates exposed per request")
    n_categories: int = Field(30, ge=2, le=1000)
    interest_volatility: float = Field(
        0.35, ge=0, description="std of the per-request random walk of the interest mix (logit scale)"
    )

    @model_validator(mode="after")
    def _exposed_fits(self) -> RequestSimConfig:
        if self.exposed > self.candidates:
            raise ValueError(f"exposed ({self.exposed}) must not exceed candidates ({self.candidates})")
        return self


class SimulatorSource(_Strict):
    """The built-in short-video platform simulator (knows the true effects)."""

    type: Literal["simulator"] = "simulator"
    n_users: int = Field(200_000, ge=10)
    seed: int = 7
    start_date: date = Field(date(2026, 11, 1), description="first experiment day")
    feature_days: int = Field(14, ge=1, le=60, description="daily feature snapshots before the experiment")
    experiment_days: int = Field(7, ge=1, le=60, description="days over which users enter the experiment")
    treatments: list[str] = Field(default_factory=lambda: ["t1", "t2"], min_length=1)
    combined_arms: list[str] = Field(
        default_factory=list,
        description="extra RCT arms switching several treatments on together, e.g. 't1+t2' "
        "(members in the order of `treatments`)",
    )
    arm_shares: list[float] | None = Field(
        None,
        description="assignment probabilities: control, the treatments, then the combined arms; "
        "default: equal shares",
    )
    combo_interaction: float = Field(
        0.3, ge=0, le=1,
        description="share of the summed relative effects a combined arm loses (0 = additive)",
    )
    responses: list[str] = Field(default_factory=lambda: ["usage_time", "video_views"], min_length=1)
    effect_scale: float = Field(1.0, ge=0, description="multiplies every treatment effect (0 = no effect)")
    noise_scale: float = Field(1.0, ge=0, description="multiplies the outcome noise (0 = outcomes equal truth)")
    drift: float = Field(
        0.0, ge=0, le=1, description="day-to-day feature drift: 0 = stationary, 0.1 = strong"
    )
    requests: RequestSimConfig = Field(default_factory=RequestSimConfig)
    scenario: Literal["default", "duration_mix"] = Field(
        "default", description="default: the consumption vs commercialization treatments (HMUM); duration_mix: "
        "treatments boost short / medium / long videos, with real-time interest and play labels (CDUM)")

    @field_validator("treatments", "responses")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a valid name (letters, digits, underscore)")
        if len(set(v)) != len(v):
            raise ValueError(f"names must be unique, got {v}")
        if CONTROL in v:
            raise ValueError(f"{CONTROL!r} is reserved for the control arm")
        return v

    @model_validator(mode="after")
    def _combined(self) -> SimulatorSource:
        # One spelling per set of treatments (configured order), so an arm name
        # identifies its set and truth columns / policy decisions can match it.
        seen: set[str] = set()
        for entry in self.combined_arms:
            members = entry.split("+")
            unknown = [m for m in members if m not in self.treatments]
            if unknown:
                raise ValueError(
                    f"combined arm {entry!r}: unknown treatment(s) {unknown}, configured: {self.treatments}"
                )
            if len(members) < 2:
                raise ValueError(f"combined arm {entry!r} needs at least 2 treatments joined by '+'")
            if len(set(members)) != len(members):
                raise ValueError(f"combined arm {entry!r} names a treatment twice")
            canonical = "+".join(t for t in self.treatments if t in members)
            if entry != canonical:
                raise ValueError(
                    f"combined arm {entry!r}: list its treatments in the order of `treatments`: {canonical!r}"
                )
            if entry in seen:
                raise ValueError(f"combined arm {entry!r} is listed twice")
            seen.add(entry)
        return self

    @model_validator(mode="after")
    def _shares(self) -> SimulatorSource:
        if self.arm_shares is not None:
            n_arms = len(self.arm_names())
            if len(self.arm_shares) != n_arms:
                raise ValueError(
                    f"arm_shares needs {n_arms} values (control + {len(self.treatments)} treatments"
                    f" + {len(self.combined_arms)} combined arms), got {len(self.arm_shares)}"
                )
            if any(s <= 0 for s in self.arm_shares) or abs(sum(self.arm_shares) - 1) > 1e-6:
                raise ValueError(f"arm_shares must be positive and sum to 1, got {self.arm_shares}")
        return self

    def arm_names(self) -> list[str]:
        """All RCT arms in index order: control, the single treatments, the combined arms."""
        return [CONTROL, *self.treatments, *self.combined_arms]

    def shares(self) -> list[float]:
        """Assignment probability of each arm of :meth:`arm_names` (default: equal)."""
        n = len(self.arm_names())
        return list(self.arm_shares) if self.arm_shares else [1.0 / n] * n


class TreatmentMapping(_Strict):
    column: str
    values: dict[str, str] = Field(
        ..., description="raw value (as text) -> arm name; exactly one arm must be 'control'"
    )

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        # YAML turns 0/1 into ints; the raw column is compared as text.
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _has_control(self) -> TreatmentMapping:
        arms = set(self.values.values())
        if CONTROL not in arms:
            raise ValueError(f"treatment.values must map some value to {CONTROL!r}, got arms {sorted(arms)}")
        # Arm names become column, feature and parameter names (delta__<arm>__<response>, decision.sigma.<arm>).
        bad = sorted(a for a in arms if not a.isidentifier())
        if bad:
            raise ValueError(f"arm names must be identifiers (letters, digits, underscore; not starting with a digit), "
                             f"got {bad}: map the raw values to names such as "
                             + ", ".join(repr(_slug(a)) for a in bad))
        return self

    def arms(self) -> list[str]:
        """Arm names, control first, then treatments in first-seen order."""
        seen = [CONTROL]
        for arm in self.values.values():
            if arm not in seen:
                seen.append(arm)
        return seen


class ExperimentLogMapping(_Strict):
    path: str
    user_id: str
    timestamp: str
    timestamp_format: str | None = Field(None, description="strftime format; default: ISO 8601")
    treatment: TreatmentMapping
    responses: dict[str, str] = Field(..., min_length=1, description="response name -> column")
    propensity: str | None = Field(None, description="column with the assignment probability")

    @field_validator("responses")
    @classmethod
    def _response_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in v if not name.isidentifier())
        if bad:
            raise ValueError(f"response names (the keys; the values are your columns) must be identifiers, got {bad}: "
                             "use e.g. " + ", ".join(f"{_slug(b)!r}: {v[b]!r}" for b in bad))
        return v


def _slug(name: str) -> str:
    """An identifier close to ``name`` (suggested in errors: names are the user's to choose)."""
    out = "".join(c if c.isalnum() else "_" for c in name.strip()).strip("_").lower() or "arm"
    return out if out.isidentifier() else f"x_{out}"


class FeatureLogMapping(_Strict):
    path: str
    user_id: str
    timestamp: str | None = Field(None, description="snapshot time column; leave out for static features "
                                  "(one row per user, known before every assignment)")
    timestamp_format: str | None = None
    categorical: dict[str, str] = Field(default_factory=dict, description="feature name -> column")
    numeric: dict[str, str] = Field(default_factory=dict, description="feature name -> column")

    @model_validator(mode="after")
    def _some_features(self) -> FeatureLogMapping:
        if not self.categorical and not self.numeric:
            raise ValueError("features mapping needs at least one categorical or numeric column")
        clash = set(self.categorical) & set(self.numeric)
        if clash:
            raise ValueError(f"features listed as both categorical and numeric: {sorted(clash)}")
        return self


class ItemListMapping(_Strict):
    """Columns holding per-request lists of videos (parquet lists or JSON arrays in CSV)."""

    duration_bucket: str
    category: str
    scores: dict[str, str] = Field(..., description="response name -> column of score percentiles")


class RequestLogMapping(_Strict):
    path: str
    request_id: str
    user_id: str
    timestamp: str
    timestamp_format: str | None = None
    recent: ItemListMapping
    candidates: ItemListMapping
    exposed: str = Field(..., description="column with a 0/1 list: was the candidate exposed")
    played: str | None = Field(None, description="optional column with a 0/1 list per candidate: was it played "
                               "through (CDUM's FIC learns from these play ratios; families: [hmum, cdum])")


class LogsSource(_Strict):
    """The user's own parquet/CSV logs, mapped onto Fulcrum's schema."""

    type: Literal["logs"] = "logs"
    experiment: ExperimentLogMapping
    features: FeatureLogMapping
    requests: RequestLogMapping | None = None
    min_rows_per_arm: int = Field(100, ge=1)
    min_feature_coverage: float = Field(0.8, ge=0, le=1, description="share of experiment users that need a "
                                        "feature snapshot at or before their assignment")
    max_examples: int = Field(5, ge=1, le=100, description="bad rows quoted per problem")

    @model_validator(mode="after")
    def _request_scores_match(self) -> LogsSource:
        if self.requests is not None:
            want = set(self.experiment.responses)
            for part in ("recent", "candidates"):
                got = set(getattr(self.requests, part).scores)
                if got != want:
                    raise ValueError(
                        f"requests.{part}.scores must name exactly the responses {sorted(want)}, got {sorted(got)}"
                    )
        return self


Source = Annotated[SimulatorSource | LogsSource, Field(discriminator="type")]


# --------------------------------------------------------------------------- feast


class FeastEmbeddedProfile(_Strict):
    """Feast in local files: nothing to run (SQLite online store, file registry)."""

    offline_store: Literal["duckdb", "file"] = Field("duckdb", description="point-in-time joins over the parquet files")
    online_path: str = Field("data/feast/online.db", description="SQLite online store (relative to the project root)")
    registry_path: str = Field("data/feast/registry.db", description="file registry (relative to the project root)")
    sqlite_page_size: int = Field(
        65536,
        description="page size of a new SQLite online store: large pages make the daily bulk replace ~1.6x "
                    "faster (fewer pages to write, checkpoint and free); an existing store keeps its own",
    )

    @field_validator("sqlite_page_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 512 or v > 65536 or v & (v - 1):
            raise ValueError("sqlite_page_size must be a power of two from 512 to 65536 (SQLite's limits)")
        return v


class FeastProductionProfile(_Strict):
    """Feast against services: a Redis online store; the registry stays a file unless a SQL URL is given."""

    offline_store: Literal["duckdb", "file"] = "duckdb"
    redis_connection_string: str = Field(
        "127.0.0.1:6379", description="host:port[,password=...,ssl=true] (Feast's format); the db goes in redis_db"
    )
    redis_db: int = Field(0, ge=0, description="Redis database number; give tests their own")
    redis_key_ttl_seconds: int | None = Field(None, ge=1, description="expire online rows after this long")
    redis_publication: Literal["versioned", "in_place"] = Field(
        "versioned", description="versioned: each publication writes a new generation of keys and readers follow "
                                 "the marker (all-or-nothing); in_place: Feast's own keys (Feast's readers see "
                                 "them; mid-publication readers see a mix of two days)")
    registry_path: str = Field("data/feast/registry.db", description="file registry, used when registry_url is unset")
    registry_url: str | None = Field(
        None,
        description="SQLAlchemy URL of a SQL registry (e.g. postgresql+psycopg://...); needs that database's driver",
    )

    @field_validator("redis_connection_string")
    @classmethod
    def _no_db_in_connection(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",")]
        if not parts[0]:
            raise ValueError("redis_connection_string needs host:port first")
        if any(p.startswith("db=") for p in parts[1:]):
            raise ValueError("set the Redis database with redis_db, not db= in the connection string")
        if inline_secret(v):
            raise ValueError(f"no password in params.yaml (it is tracked and copied into dvc.lock): set the "
                             f"environment variable {REDIS_PASSWORD_ENV} or put it in {SECRETS_FILE}")
        return v

    @field_validator("registry_url")
    @classmethod
    def _no_registry_secret(cls, v: str | None) -> str | None:
        if inline_secret(v):
            raise ValueError(f"no credentials in params.yaml (it is tracked and copied into dvc.lock): set the "
                             f"whole URL in the environment variable {REGISTRY_URL_ENV} or in {SECRETS_FILE}")
        return v


class FeastConfig(_Strict):
    """The Feast feature store: its project, which profile the generated feature_store.yaml follows, and view TTLs."""

    project: str = Field("fulcrum", description="Feast project; also namespaces the online store's keys")
    profile: Literal["embedded", "production"] = "embedded"
    repo_path: str = Field("feature_repo", description="where feature_store.yaml is generated (relative to the root)")
    ttl_days: int = Field(60, ge=1, description="user_features: oldest snapshot a join may use")
    scores_ttl_days: int = Field(7, ge=1, description="uplift_scores: oldest score a lookup may use")
    embedded: FeastEmbeddedProfile = Field(default_factory=FeastEmbeddedProfile)
    production: FeastProductionProfile = Field(default_factory=FeastProductionProfile)

    @field_validator("project")
    @classmethod
    def _feast_name(cls, v: str) -> str:
        # Feast's own rule: letters, digits and underscores, not starting with an underscore.
        if not v or v.startswith("_") or not v.replace("_", "").isalnum() or not v.isascii():
            raise ValueError(f"{v!r} is not a valid Feast project name (letters, digits, underscore; no leading _)")
        return v


# --------------------------------------------------------------------------- top level


class PathsConfig(_Strict):
    data: str = "data"
    reports: str = "reports"

    def rct_dir(self, root: Path) -> Path:
        return root / self.data / "rct"

    def model_dir(self, root: Path) -> Path:
        return root / self.data / "model"

    def reports_dir(self, root: Path) -> Path:
        return root / self.reports

    def drift_dir(self, root: Path) -> Path:
        return root / self.data / "drift"

    def ddm_dir(self, root: Path) -> Path:
        return root / self.data / "ddm"

    def cpm_dir(self, root: Path) -> Path:
        return root / self.data / "cpm"

    def compare_dir(self, root: Path) -> Path:
        return root / self.data / "compare"

    def fic_dir(self, root: Path) -> Path:
        return root / self.data / "fic"

    def policy_dir(self, root: Path) -> Path:
        return root / self.data / "policy"

    def training_set_dir(self, root: Path) -> Path:
        return root / self.data / "training_set"

    def scores_dir(self, root: Path) -> Path:
        return root / self.data / "scores"


class CollectConfig(_Strict):
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of the naive ATE intervals")


# Every model a stage can train, by name (models/registry.py builds the neural ones).
HUM_MODELS = ("hum", "hum_paper", "hum_no_kl")
NEURAL_MODELS = (*HUM_MODELS, "cpm", "s_learner", "t_learner", "tarnet", "efin", "m3tn", "descn")
GBM_MODELS = ("gbm_s_learner", "gbm_t_learner")


class TrainConfigModel(_Strict):
    """HUM hyper-parameters and training schedule (spec §1; CDUM's public defaults)."""

    model: str = Field("hum", description="model family to train: hum or a baseline name")
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train/valid/test share by user")
    n_bins: int = Field(32, ge=2, le=1024, description="quantile buckets per numeric feature")
    target: Literal["mean", "log1p"] = Field("log1p", description="regress on y/mean or log1p(y)/mean")
    emb_dim: int = Field(32, ge=1)
    n_experts: int = Field(3, ge=1)
    expert_hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    tower_hidden: list[int] = Field(default_factory=lambda: [32], min_length=1)
    kl_weight: float = Field(1.0, ge=0)
    pooling: Literal["sum", "scale"] = Field("scale", description="HUM field pooling: sum (spec) or scale (concat)")
    attention: Literal["field", "target"] = Field(
        "field", description="HUM field attention: field (spec, same for every user) or target (user-conditioned)")
    treated_head: Literal["outcome", "residual"] = Field(
        "residual", description="HUM treated path: outcome (spec) or residual (offset to the control logit)")
    treated_input: Literal["treated", "control"] = Field(
        "control", description="HUM residual treated head reads its own pass (treated: e_t^k, spec) or the control "
        "pass's representation (control)")
    detach_control: bool = Field(
        False, description="HUM residual head: treated rows train only the offset u^k, not the control logit")
    control_grad: float = Field(
        1.0, ge=0.0, le=1.0, description="HUM residual head: share of a treated row's gradient that reaches the "
        "control logit (1: all; 0: as detach_control)")
    offset_mean: float = Field(
        1.0, ge=0.0, le=1.0, description="HUM residual head: the offset u^k is added to (1 − s)·branch k's own "
        "control logit + s·the branches' mean control logit (s > 0: every arm's rows train every control path)")
    experts: Literal["branch", "shared"] = Field(
        "branch", description="HUM: each treatment branch's own experts (spec) or one set shared by every branch")
    offset_init: Literal["zero", "uniform", "small"] = Field(
        "uniform", description="HUM residual head: the offset's output layer starts at zero (δ = 0), uniform "
        "±1/√fan_in (every layer learns from the first step) or small (uniform / 10: a random start 10× smaller)")
    offset_tower: Literal["response", "joint"] = Field(
        "joint", description="HUM residual head: one offset tower per response (response) or one per branch "
        "over every response's representation, giving all R offsets (joint)")
    offset_wide: Literal["none", "add", "only"] = Field(
        "none", description="HUM residual head: an additive part of the offset, one scalar per (treatment, response, "
        "feature id) summed over the row's fields: none, add (deep tower + wide sum) or only (the wide sum alone)")
    huber_delta: float | None = Field(
        None, gt=0, description="HUM: null = squared-error loss; a number δ (in target units) = squared error up to "
        "|residual| δ and linear beyond, so zero-inflated responses pull the fit less (validation still reports MSE)")
    positive_part: list[str] = Field(
        [], description="HUM: responses fitted on their positive rows only (the amount part of a two-part model, "
        "for zero-inflated continuous responses whose zero share no treatment moves; the train stage refuses a "
        "response whose zero share differs between arms). δ is then the relative effect on the positive amount")
    balanced: bool = Field(True, description="HUM: attention weights sum to f and e_t starts at the field embeddings' scale")
    control: Literal["mean", "own"] = Field(
        "own", description="HUM: δ^k against the branches' mean control (spec) or branch k's own control head")
    dropout: float = Field(0.0, ge=0, lt=1)
    ensemble: int = Field(
        5, ge=1, le=16, description="networks fit one after the other from their own seeds, their expected "
        "outcomes averaged (1 = one network); applies to every neural model")
    member_valid: Literal["shared", "own"] = Field(
        "own", description="ensemble members' users: shared (every member trains on the train split and stops on "
        "the valid split) or own (member m > 0 deals the train and valid users again by its own seeded hash at the "
        "same share: the members see different training users and stop on different validation users; the test "
        "split is untouched)")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    offset_weight_decay: float | None = Field(
        None, ge=0, description="HUM residual head: Adam weight decay of the offset towers and wide table only (null = "
        "weight_decay, like every other parameter)")
    offset_wide_lr: float | None = Field(
        None, gt=0, description="HUM offset_wide: the wide table's own step size (SGD with momentum: an Adam group "
        "with eps 1); null = Adam's lr and normalized step like every other parameter")
    offset_wide_step: Literal["same", "noise"] = Field(
        "same", description="HUM offset_wide with offset_wide_lr: one step for every response (same), or response "
        "r's step ∝ 1 / the variance of its training targets, averaging the configured step (noise: early stopping then shrinks each "
        "response's table in proportion to its noise)")
    ema: float = Field(
        0.0, ge=0, lt=1, description="> 0: validate, select and keep the exponential moving average of the "
        "weights over training steps with this decay (0 = the last step's weights)")
    select: Literal["loss", "qini"] = Field(
        "loss", description="early stopping / best epoch on validation loss (tracks the truth) or validation QINI")
    min_epochs: int = Field(12, ge=1, description="no early stop or best-epoch pick before this epoch")
    per_arm_select: bool | Literal["auto"] = Field(
        "auto", description="also keep, per treatment k, the weights of the epoch where arm k's validation rows "
        "alone have the lowest loss, and read treatment k's effect from them (on the best epoch's control "
        "outcome); every neural model, where there are validation rows. true: every treatment; auto: where "
        "every treated arm has per_arm_min_valid_rows validation rows, and then only a treatment whose own "
        "epoch beats the best epoch on its rows by a paired z >= per_arm_min_z")
    per_arm_min_valid_rows: int = Field(
        7_000, ge=1, description="per_arm_select auto: validation rows the smallest treated arm needs (the smallest "
        "size measured: 200k users at the default split give 7.2k per arm, 1M users 36k)")
    per_arm_min_z: float = Field(
        1.645, description="per_arm_select auto: paired z (per-row loss gain over the best epoch on the arm's "
        "validation rows) a treatment's own epoch needs to be used (1.645: one-sided 5 %, optimistic since the "
        "same rows picked the epoch)")
    early_stopping_patience: int = Field(6, ge=1)
    plateau_factor: float = Field(0.6, gt=0, lt=1)
    plateau_patience: int = Field(3, ge=0)
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    processes: int = Field(
        1, ge=1, le=64, description="data-parallel training processes of the train stage (torch DDP over gloo, on "
        "CPU): `fulcrum train` starts them with torchrun, each takes its share of every batch; 1 = one process")

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x <= 0 for x in v) or abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"split must be three positive shares summing to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _processes_fit(self) -> TrainConfigModel:
        if self.processes > 1 and self.device.startswith("cuda"):
            raise ValueError(f"train.processes {self.processes} trains on CPU (gloo): set train.device to auto or cpu")
        if self.processes > self.batch_size:
            raise ValueError(f"train.processes {self.processes} exceeds train.batch_size {self.batch_size}: every "
                             "process needs rows of every batch")
        return self


class EvaluateConfig(_Strict):
    """How models are judged: the held-out test split, or cross-fitting over every user."""

    lift_k: float = Field(0.3, gt=0, lt=1, description="share of top-ranked users for LIFT@k")
    curve_points: int = Field(200, ge=10, description="points kept per curve in DVC plot data")
    protocol: Literal["auto", "holdout", "cross_fit"] = Field(
        "auto", description="holdout: the train.split test users; cross_fit: every user scored out of fold; "
        "auto: cross_fit up to cross_fit_max_users users, else holdout")
    cross_fit_max_users: int = Field(
        100_000, ge=0, description="auto picks cross_fit up to this many users (it trains folds × repeats + 1 models)")
    folds: int = Field(5, ge=2, le=20, description="cross-fitting folds (by user hash)")
    repeats: int = Field(2, ge=1, le=10, description="fold assignments, each with its own model seed: the "
                         "intervals cover the split and the seed")
    bootstrap: int = Field(200, ge=20, description="bootstrap resamples of users for the QINI intervals")

    def protocol_for(self, n_users: int) -> Literal["holdout", "cross_fit"]:
        """The protocol used on a data set of ``n_users`` experiment users."""
        if self.protocol == "auto":
            return "cross_fit" if n_users <= self.cross_fit_max_users else "holdout"
        return self.protocol


class CompareConfig(_Strict):
    """The multi-seed comparison of HUM against the baselines (its own stage)."""

    models: list[str] = Field(
        default_factory=lambda: [
            "hum", "hum_paper", "hum_no_kl", "s_learner", "t_learner", "tarnet", "efin", "m3tn",
            "descn", "gbm_s_learner", "gbm_t_learner",
        ]
    )
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    bootstrap: int = Field(200, ge=10, description="paired bootstrap resamples for the HUM-vs-baseline test")
    max_seed_std: float = Field(0.05, gt=0, description="target seed std of the reference's ρ(true) per cell; "
                                "the report gives each cell's std with its 95 % χ² interval against it")

    @field_validator("models")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        known = {*NEURAL_MODELS, *GBM_MODELS}
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown models {bad}; choose from {sorted(known)}")
        return v


class ScoreConfig(_Strict):
    """Daily scoring of every user (chunked, so memory stays flat as users grow)."""

    date: Date | None = Field(None, description="score date; default: the day after the last feature snapshot")
    chunk_size: int = Field(100_000, ge=1, description="users scored per chunk")
    duckdb_memory_limit: str = Field("2GB", description="memory cap of the latest-snapshot query (DuckDB spills past it)")
    # A list, not a count: DVC's foreach iterates it (stages score_part@0 … score_part@N-1), so
    # the ids themselves are the one place N is written.
    partitions: list[int] = Field([0], min_length=1, max_length=1024,
                                  description="score partition ids 0..N-1: users split by a stable hash of the id "
                                              "into N parts, each scored by its own stage, then combined")

    @field_validator("partitions", mode="before")
    @classmethod
    def _not_a_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"the list of partition ids (DVC iterates it), not a count: for {v} partitions "
                             f"write {list(range(max(v, 1)))}")
        return v

    @field_validator("partitions")
    @classmethod
    def _ids_in_order(cls, v: list[int]) -> list[int]:
        if v != list(range(len(v))):
            raise ValueError(f"partition ids must be 0..N-1 in order: {list(range(len(v)))} for N = {len(v)}")
        return v

    @property
    def n_partitions(self) -> int:
        return len(self.partitions)


class PublishConfig(_Strict):
    writer: Literal["bulk", "feast"] = Field(
        "bulk", description="bulk: Fulcrum's vectorized writer (SQLite, Redis); feast: Feast's write_to_online_store")
    chunk_size: int = Field(50_000, ge=1, description="users per online-store write")
    max_abs_delta: float = Field(10.0, gt=0, description="refuse a snapshot with any |δ| above this (δ is relative: "
                                                          "10 = +1000 %) or any δ ≤ −1")
    max_outlier_share: float = Field(0.01, ge=0, le=1, description="refuse when a larger share of a δ column lies "
                                     "outside the last publication's range (1 = off)")
    outlier_margin_iqr: float = Field(3.0, ge=0, description="that range: the last publication's 0.1–99.9 % "
                                      "quantiles widened by this many interquartile ranges")


class DriftConfig(_Strict):
    """Evidently drift checks that gate publishing (share of drifted columns per check)."""

    features_threshold: float = Field(0.3, ge=0, le=1, description="today's user features vs the training reference")
    scores_threshold: float = Field(0.5, ge=0, le=1, description="today's δ vs the last published δ")
    responses_threshold: float = Field(0.5, ge=0, le=1, description="new RCT responses vs the last accepted ones")
    sample_size: int = Field(50_000, ge=100, description="rows sampled from each side (seeded) before a check")
    force_publish: bool = Field(False, description="publish even when a check fails (the report still says so)")


class DDMConfig(_Strict):
    """DDM (spec §2.1): value weights from request-level item lists; its training schedule."""

    emb_dim: int = Field(16, ge=1, description="item embedding size d_s")
    n_experts: int = Field(4, ge=1)
    expert_hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1)
    tower_hidden: list[int] = Field(default_factory=lambda: [16])
    max_items: int = Field(50, ge=1, description="items kept per list (longer lists are truncated)")
    valid_share: float = Field(0.2, gt=0, lt=1, description="requests held out (by user) for validation")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(0.002, gt=0)
    early_stopping_patience: int = Field(3, ge=1, description="epochs without a lower validation MSE")
    device: str = Field("auto", description="auto (CUDA when available), cpu or cuda")


HMUM, CDUM = "hmum", "cdum"
FAMILIES = (HMUM, CDUM)  # the model families / decision policies, in the order a release lists them


class CDUMConfig(_Strict):
    """CDUM (spec §3), the second model family: CPM daily, FIC per request, rule r̂^k·ŷ^k − ŷ^0 > ξ_k."""

    fic: DDMConfig = Field(default_factory=DDMConfig, description="FIC: DDM's request network, one tower per treatment")
    xi: dict[str, float] = Field(default_factory=dict, description="ξ per treatment (used when policy.calibrate is "
                                 "false); missing ones use default_xi")
    default_xi: float = 0.0
    mode: Literal["independent", "exclusive"] = Field(
        "exclusive", description="exclusive: at most one treatment, the best gain above ξ (duration mixes exclude "
                                 "each other); independent: each treatment on its own rule")

    def xi_for(self, treatments: list[str]) -> list[float]:
        return [float(self.xi.get(t, self.default_xi)) for t in treatments]


class DecisionConfig(_Strict):
    """The decision rule (spec §2.2): switch treatment k on iff φ^k = Σ_r w_r δ_r^k > σ_k."""

    sigma: dict[str, float] = Field(default_factory=dict, description="σ per treatment; missing ones use default_sigma")
    default_sigma: float = 0.0
    mode: Literal["independent", "exclusive"] = Field(
        "independent", description="independent: each treatment on iff φ^k > σ_k (the paper's rule; several may be "
                                   "on); exclusive: at most one, the largest φ^k above its σ_k (ties: the first)")

    weights: dict[str, float] | None = Field(
        None, description="fixed value weights w_r per response (normalized to sum to 1), used instead of DDM's "
                          "per-request weights; null: DDM's, or equal weights when the data has no request logs")

    @field_validator("weights")
    @classmethod
    def _usable_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (any(not w >= 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError(f"weights must be ≥ 0 with a positive sum, got {v}")
        return v

    def sigma_for(self, treatments: list[str]) -> list[float]:
        return [float(self.sigma.get(t, self.default_sigma)) for t in treatments]

    def weight_source(self, has_requests: bool) -> Literal["ddm", "fixed"]:
        """Where the rule's value weights come from: DDM (request logs, no fixed weights set) or fixed ones."""
        return "ddm" if has_requests and self.weights is None else "fixed"

    def fixed_weights(self, responses: list[str]) -> list[float]:
        """The fixed weights in ``responses`` order, summing to 1 (equal when none are configured)."""
        raw = [1.0] * len(responses) if self.weights is None else [float(self.weights.get(r, 0.0)) for r in responses]
        if sum(raw) <= 0:
            raise ConfigError(f"decision.weights {self.weights} gives no weight to any of the responses {responses}")
        return [w / sum(raw) for w in raw]


class PolicyConfig(_Strict):
    """Offline policy evaluation, σ calibration and the policy gate on deploy (spec §5)."""

    objective_weights: dict[str, float] | None = Field(
        None, description="λ_r of the objective Σ_r λ_r·relative lift_r; null: the mean DDM weights of the users"
    )
    guardrails: dict[str, float] = Field(
        default_factory=dict, description="g_r in %: lower bound of response r's relative lift must be ≥ −g_r"
    )
    default_guardrail: float = Field(1.0, ge=0, description="g_r (%) for responses not listed in guardrails")
    budget: float | None = Field(None, gt=0, le=1, description="most share of users treated (null: no budget)")
    calibrate: bool = Field(True, description="release the σ calibrated on validation users (false: decision.sigma)")
    gate_margin: float = Field(
        1.0, ge=1, le=5, description="calibration checks the guard-rails with each interval's lower half widened by "
        "this factor, so the σ it picks clears them by enough to pass the gate on the test users too (1: as is)")
    max_candidates: int = Field(400, ge=4, description="σ vectors tried by the calibration (grid per treatment)")
    bootstrap: int = Field(200, ge=20, description="bootstrap resamples of users for the intervals")
    level: float = Field(0.95, gt=0.5, lt=1, description="interval level")
    frontier_points: int = Field(25, ge=3, description="σ values (and global weights) swept for the frontier")
    calibration_share: float = Field(
        0.3, gt=0, lt=1, description="under evaluate's cross_fit protocol: share of users (by hash) σ is calibrated "
        "on; the policies are valued on the others (holdout: train.split's valid / test users)")
    gate: bool = Field(True, description="deploy refuses a release whose policy breaks a guard-rail on test users")
    force: bool = Field(False, description="release even when the gate blocks (recorded in the release)")

    @field_validator("objective_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError(f"objective_weights must be ≥ 0 with a positive sum, got {v}")
        return v

    @field_validator("guardrails")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        if any(g < 0 for g in v.values()):
            raise ValueError(f"guard-rails are tolerated losses in %, ≥ 0; got {v}")
        return v

    def guardrails_for(self, responses: list[str]) -> list[float]:
        """g_r as fractions, in ``responses`` order (unknown names in guardrails are refused)."""
        unknown = sorted(set(self.guardrails) - set(responses))
        if unknown:
            raise ConfigError(f"policy.guardrails names unknown responses {unknown}; the data has {responses}")
        return [self.guardrails.get(r, self.default_guardrail) / 100 for r in responses]


class ServeConfig(_Strict):
    """The BentoML decision service and the deploy stage's smoke test."""

    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(2, ge=1, description="BentoML worker processes")
    access_log: bool = Field(False, description="BentoML's per-request access log (costs ~1 ms per request)")
    metrics: bool = Field(True, description="BentoML's Prometheus /metrics (request counts and durations)")
    tracing: bool = Field(
        False, description="OpenTelemetry spans for /decide and /decide_batch (exported where BentoML's tracing "
                           "configuration says); off, the decision endpoints skip the tracing middleware")
    score_reader: Literal["direct", "feast"] = Field(
        "direct", description="direct: read δ in Feast's layout with one indexed query / HMGET (~0.1 ms); "
                              "feast: through get_online_features (~0.4 ms)")
    max_items: int = Field(500, ge=1, description="longest item list a request may carry (else 4xx)")
    max_batch: int = Field(256, ge=1, description="most requests in one /decide_batch call (else 4xx)")
    bentoml_home: str = Field("data/bentoml", description="BentoML's model and bento store (relative to the root)")
    smoke_timeout_s: float = Field(120, gt=0, description="how long deploy waits for the smoke-test server")


class AirflowProduction(_Strict):
    sql_alchemy_conn: str = Field("postgresql+psycopg2://postgres@127.0.0.1:5432/fulcrum_airflow",
                                  description="metadata database (PostgreSQL)")
    executor: str = Field("LocalExecutor", description="LocalExecutor here; CeleryExecutor/KubernetesExecutor past one machine")

    @field_validator("sql_alchemy_conn")
    @classmethod
    def _no_db_secret(cls, v: str) -> str:
        if inline_secret(v):
            raise ValueError(f"no credentials in params.yaml (it is tracked): set the whole URL in the environment "
                             f"variable {AIRFLOW_DB_ENV} or in {SECRETS_FILE}")
        return v


class AirflowDistributed(_Strict):
    """CeleryExecutor past one machine: a broker, a PostgreSQL metadata DB and result backend, workers.

    Each worker runs in its own working directory (its own checkout of the project) and shares
    no disk with the others: a task pulls its inputs from the DVC remote (``remote``) and pushes
    its outputs back (``fulcrum.remote_run``).
    """

    sql_alchemy_conn: str = Field("postgresql+psycopg2://postgres@127.0.0.1:5432/fulcrum_airflow_celery",
                                  description="metadata database (PostgreSQL)")
    # No user in the URL: kombu then logs in as RabbitMQ's guest/guest, which only loopback accepts.
    broker_url: str = Field("amqp://127.0.0.1:5672//", description="Celery broker (RabbitMQ)")
    result_backend: str = Field("db+postgresql+psycopg2://postgres@127.0.0.1:5432/fulcrum_airflow_celery",
                                description="Celery result backend: db+ and a SQLAlchemy URL that names its driver (SQLAlchemy 2.1 defaults to psycopg 3)")
    queue: str = Field("fulcrum", pattern=r"^[A-Za-z0-9_.-]+$", description="the Celery queue the workers serve")
    workers: int = Field(2, ge=1, le=64, description="Celery workers `make airflow-distributed` starts (loopback)")
    worker_concurrency: int = Field(1, ge=1, description="task slots per worker")
    workdir: str = Field(".airflow/workers", description="loopback workers' working directories (relative to the root)")

    @field_validator("sql_alchemy_conn", "broker_url", "result_backend")
    @classmethod
    def _no_secret(cls, v: str) -> str:
        if inline_secret(v):
            raise ValueError("no credentials in params.yaml (it is tracked): put them in the environment "
                             f"(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, AIRFLOW__CELERY__BROKER_URL, "
                             f"AIRFLOW__CELERY__RESULT_BACKEND) or in {SECRETS_FILE}")
        return v


class AirflowConfig(_Strict):
    """How `make airflow` runs Airflow: embedded (SQLite), production (PostgreSQL) or distributed (Celery)."""

    profile: Literal["embedded", "production", "distributed"] = "embedded"
    home: str = Field(".airflow", description="AIRFLOW_HOME, relative to the project root")
    host: str = Field("127.0.0.1", description="API server / UI bind address")
    port: int = Field(8080, ge=1, le=65535)
    parallelism: int = Field(4, ge=1, description="task slots (2 cores: keep it small)")
    production: AirflowProduction = Field(default_factory=AirflowProduction)
    distributed: AirflowDistributed = Field(default_factory=AirflowDistributed)


class LocalRemote(_Strict):
    """A DVC remote in a local (or mounted) directory: the default, and what loopback workers share."""

    type: Literal["local"] = "local"
    path: str = Field(".dvc-remote", description="the remote's directory (relative paths: from the project root)")


class S3Remote(_Strict):
    """A DVC remote on S3 (or an S3-compatible store): credentials come from the usual AWS variables."""

    type: Literal["s3"] = "s3"
    url: str = Field(..., pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="for S3-compatible stores (MinIO, Ceph); None = AWS")


Remote = Annotated[LocalRemote | S3Remote, Field(discriminator="type")]


class FulcrumConfig(_Strict):
    """The whole configuration (``params.yaml``)."""

    seed: int = 7
    families: list[str] = Field(
        default_factory=lambda: [HMUM], min_length=1,
        description="model families the daily cycle trains, publishes, values and serves: [hmum] or [hmum, cdum]; "
                    "the first is the service's default policy")
    paths: PathsConfig = Field(default_factory=PathsConfig)
    source: Source = Field(default_factory=SimulatorSource)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    train: TrainConfigModel = Field(default_factory=TrainConfigModel)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    feast: FeastConfig = Field(default_factory=FeastConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    ddm: DDMConfig = Field(default_factory=DDMConfig)
    cdum: CDUMConfig = Field(default_factory=CDUMConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    remote: Remote = Field(default_factory=LocalRemote)

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in FAMILIES]
        if bad:
            raise ValueError(f"unknown families {bad}; choose from {list(FAMILIES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"families lists one family twice: {v}")
        if HMUM not in v:
            # HUM's δ is what drift, the publication marker and the policy gate are built on;
            # CDUM runs beside it, not instead of it.
            raise ValueError(f"families must include {HMUM!r} (the base family CDUM runs beside), got {v}")
        return v

    @model_validator(mode="after")
    def _keys_name_the_data(self) -> FulcrumConfig:
        """Per-treatment and per-response settings must name the data's treatments and responses.

        Found by probing: the simulator's σ keys (t1, t2) left in place for a user's own arms
        were silently ignored, every arm getting the default σ.
        """
        treatments, responses = self.treatments(), self.responses()
        problems = []
        for where, keys, valid, what in (
            ("decision.sigma", self.decision.sigma, treatments, "treatments"),
            ("cdum.xi", self.cdum.xi, treatments, "treatments"),
            ("policy.guardrails", self.policy.guardrails, responses, "responses"),
            ("policy.objective_weights", self.policy.objective_weights or {}, responses, "responses"),
            ("decision.weights", self.decision.weights or {}, responses, "responses"),
        ):
            unknown = [k for k in keys if k not in valid]
            if unknown:
                problems.append(f"{where} names {unknown}, which the data does not have ({what}: {valid})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _reader_sees_the_publication(self) -> FulcrumConfig:
        """Feast's reader reads Feast's own Redis keys, which a versioned publication does not write."""
        if (self.feast.profile == "production" and self.feast.production.redis_publication == "versioned"
                and self.serve.score_reader == "feast"):
            raise ValueError("serve.score_reader: feast reads Feast's own Redis keys, which "
                             "feast.production.redis_publication: versioned does not write: use the direct "
                             "reader or redis_publication: in_place")
        return self

    def treatments(self) -> list[str]:
        """The single treatments of the configured source (its arms but control and combined ones)."""
        if isinstance(self.source, SimulatorSource):
            return list(self.source.treatments)
        return [a for a in self.source.experiment.treatment.arms()[1:] if "+" not in a]

    def responses(self) -> list[str]:
        """The responses of the configured source."""
        if isinstance(self.source, SimulatorSource):
            return list(self.source.responses)
        return list(self.source.experiment.responses)

    @property
    def cdum_on(self) -> bool:
        """Does the daily cycle run CDUM (CPM, FIC, their scores and policy)?"""
        return CDUM in self.families

    @model_validator(mode="before")
    @classmethod
    def _default_source_type(cls, data: Any) -> Any:
        # A source section without `type` means the simulator (the embedded default).
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "type" not in data["source"]:
            data = {**data, "source": {"type": "simulator", **data["source"]}}
        return data


# --------------------------------------------------------------------------- loading


# Tagged unions put the tag into pydantic's error path (source.logs.features...); the YAML has no such level.
_UNION_TAGS = {("source",): ("simulator", "logs")}
SOURCE_NEEDS = {
    "simulator": "a simulator source takes n_users, seed, treatments, responses, ... (see `fulcrum config`)",
    "logs": "a logs source needs source.experiment (path, user_id, timestamp, treatment, responses) and "
            "source.features (path, user_id, categorical and/or numeric; timestamp unless the features are "
            "static); source.requests is optional (README \"Bring your own logs\")",
}


def _yaml_path(loc: tuple) -> tuple:
    """pydantic's error location as the YAML path (union tags removed)."""
    for prefix, tags in _UNION_TAGS.items():
        n = len(prefix)
        if tuple(loc[:n]) == prefix and len(loc) > n and loc[n] in tags:
            return (*loc[:n], *loc[n + 1:])
    return tuple(loc)


def format_errors(err: ValidationError, path: Path | str) -> str:
    """One ``path: reason`` line per problem; unknown keys grouped per section, plus what a source type needs."""
    lines = [f"invalid configuration in {path}:"]
    extra: dict[str, list[str]] = {}
    sources: set[str] = set()
    for e in err.errors():
        loc = _yaml_path(e["loc"])
        structural = e["type"] in ("missing", "extra_forbidden")
        if structural and len(e["loc"]) > 1 and e["loc"][0] == "source" and e["loc"][1] in SOURCE_NEEDS:
            sources.add(e["loc"][1])
        if e["type"] == "extra_forbidden" and loc:
            extra.setdefault(".".join(str(p) for p in loc[:-1]) or "(top level)", []).append(str(loc[-1]))
            continue
        where = ".".join(str(p) for p in loc) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {redact(repr(got))})"
        lines.append(f"  {where}: {e['msg']}{shown}")
    for where, keys in extra.items():
        lines.append(f"  {where}: unknown settings {', '.join(keys)} (not part of this section"
                     f"{' for this source type' if where == 'source' else ''}: remove them)")
    lines += [f"  note: {SOURCE_NEEDS[t]}" for t in sorted(sources)]
    return "\n".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key.sub=value`` strings (values are YAML) into a dotted-key dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file holding a mapping at the top level; ConfigError naming the file otherwise."""
    if not path.exists():
        raise ConfigError(f"configuration file {path} not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return tree


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FulcrumConfig:
    """Read and validate ``params.yaml`` (or ``$FULCRUM_PARAMS``), applying dotted overrides."""
    path = Path(path or os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))
    tree = read_yaml_mapping(path)
    for k, v in (overrides or {}).items():
        _set_dotted(tree, k, v)
    try:
        return FulcrumConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e, path)) from None
