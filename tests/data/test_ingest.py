"""The logs source: mapping the user's own RCT logs onto the canonical dataset, and the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fulcrum import schema as S
from fulcrum.config import LogsSource
from pipelines.sources.logs import USER_MAP_FILE, canonical_user_ids, ingest_logs
from pipelines.validation import ContractError

ARM_SIZES = {0: 150, 1: 170, 2: 130}  # raw treatment value -> users
ARMS = {0: "control", 1: "t_a", 2: "t_b"}
RESPONSES = {"usage_time": "Watch Minutes", "video_views": "n views"}
TS_UTC = pa.timestamp("us", tz="UTC")
FEATURE_FORMAT = "%d/%m/%Y %H:%M"


# --------------------------------------------------------------------------- synthetic logs


def make_frames(string_ids: bool = False, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Experiment, features and requests logs with unusual column names (lists as Python lists)."""
    rng = np.random.default_rng(seed)
    n = sum(ARM_SIZES.values())
    raw_ids = np.arange(1001, 1001 + n)
    ids = [f"u-{i:05d}-x" for i in raw_ids] if string_ids else raw_ids
    grp = np.repeat(list(ARM_SIZES), list(ARM_SIZES.values()))
    assigned = pd.Timestamp("2026-11-01 08:00", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 7 * 86_400, n), unit="s"
    )
    exp = pd.DataFrame(
        {
            "Customer ID": ids,
            # Local times with an offset; the canonical output is UTC.
            "assigned@": [t.tz_convert("Europe/Berlin").isoformat() for t in assigned],
            "grp": grp,
            "Watch Minutes": np.round(rng.gamma(2.0, 10.0, n), 3),
            "n views": rng.poisson(5, n).astype(float),
            "p(assign)": np.round(rng.uniform(0.2, 0.5, n), 4),
        }
    )
    snaps = [pd.Timestamp("2026-10-30 23:59"), pd.Timestamp("2026-10-31 23:59")]
    feat = pd.DataFrame(
        {
            "cust": np.tile(ids, 2),
            "snap time": [t.strftime(FEATURE_FORMAT) for t in np.repeat(snaps, n)],
            "Region Code": rng.choice(["north", "south", "east"], 2 * n),
            "plan": rng.integers(0, 4, 2 * n),
            "age (yrs)": rng.integers(16, 70, 2 * n).astype(float),
            "spend$": np.round(rng.uniform(0, 100, 2 * n), 2),
        }
    )
    m = 60
    req_users = list(rng.choice(np.asarray(ids, dtype=object), m - 2))
    # Two requests from users outside the experiment: allowed.
    req_users += ["u-99999-x", "u-99998-x"] if string_ids else [99_999, 99_998]
    req = {"req#": np.arange(5001, 5001 + m), "cust": req_users}
    req["when"] = [
        (pd.Timestamp("2026-11-02", tz="UTC") + pd.Timedelta(minutes=int(k))).isoformat()
        for k in rng.integers(0, 5000, m)
    ]
    recent_len = rng.integers(1, 5, m)
    cand_len = rng.integers(2, 6, m)
    for prefix, lens in (("hist", recent_len), ("cands", cand_len)):
        req[f"{prefix} dur"] = [rng.integers(0, 5, k).tolist() for k in lens]
        req[f"{prefix} cat"] = [rng.integers(0, 30, k).tolist() for k in lens]
        req[f"{prefix} s1"] = [np.round(rng.uniform(0, 1, k), 3).tolist() for k in lens]
        req[f"{prefix} s2"] = [np.round(rng.uniform(0, 1, k), 3).tolist() for k in lens]
    req["shown"] = [rng.integers(0, 2, k).tolist() for k in cand_len]
    return {"experiment": exp, "features": feat, "requests": pd.DataFrame(req)}


LIST_COLUMNS = [f"{p} {k}" for p in ("hist", "cands") for k in ("dur", "cat", "s1", "s2")] + [
    "shown"
]


def write_frames(frames: dict[str, pd.DataFrame], base: Path, ext: str) -> None:
    """Write the logs under ``base/logs``: CSV list cells as JSON arrays, parquet as lists."""
    (base / "logs").mkdir(exist_ok=True)
    for name, df in frames.items():
        path = base / "logs" / f"{name}.{ext}"
        if ext == "csv":
            df = df.copy()
            for col in LIST_COLUMNS:
                if col in df.columns:
                    df[col] = [v if isinstance(v, str) else json.dumps(v) for v in df[col]]
            df.to_csv(path, index=False)
        else:
            if "shown" in df.columns:
                df = df.assign(shown=[[bool(x) for x in v] for v in df["shown"]])
            df.to_parquet(path, index=False)


def source(ext: str, **over) -> LogsSource:
    cfg = {
        "type": "logs",
        "experiment": {
            "path": f"logs/experiment.{ext}",
            "user_id": "Customer ID",
            "timestamp": "assigned@",
            "treatment": {"column": "grp", "values": {k: v for k, v in ARMS.items()}},
            "responses": dict(RESPONSES),
            "propensity": "p(assign)",
        },
        "features": {
            "path": f"logs/features.{ext}",
            "user_id": "cust",
            "timestamp": "snap time",
            "timestamp_format": FEATURE_FORMAT,
            "categorical": {"region": "Region Code", "plan": "plan"},
            "numeric": {"age": "age (yrs)", "spend": "spend$"},
        },
        "requests": {
            "path": f"logs/requests.{ext}",
            "request_id": "req#",
            "user_id": "cust",
            "timestamp": "when",
            "recent": {
                "duration_bucket": "hist dur",
                "category": "hist cat",
                "scores": {"usage_time": "hist s1", "video_views": "hist s2"},
            },
            "candidates": {
                "duration_bucket": "cands dur",
                "category": "cands cat",
                "scores": {"usage_time": "cands s1", "video_views": "cands s2"},
            },
            "exposed": "shown",
        },
        "min_rows_per_arm": 100,
        "max_examples": 5,
    }
    for dotted, value in over.items():
        node = cfg
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node[k]
        if value is None:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return LogsSource.model_validate(cfg)


def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


# --------------------------------------------------------------------------- round trip


def _expected_utc(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values).astype(str), format="ISO8601", utc=True)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_round_trip(tmp_path: Path, ext: str) -> None:
    frames = make_frames()
    write_frames(frames, tmp_path, ext)
    # Parquet: no propensity column mapped -> empirical arm shares.
    src = source(ext) if ext == "csv" else source(ext, **{"experiment.propensity": None})
    out = out_dir(tmp_path)
    manifest = ingest_logs(src, out, tmp_path)

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [S.EXPERIMENT_FILE, S.FEATURES_FILE, S.REQUESTS_FILE]
    )
    exp_in, feat_in, req_in = frames["experiment"], frames["features"], frames["requests"]
    n = len(exp_in)

    exp = pq.read_table(out / S.EXPERIMENT_FILE)
    assert exp.schema == pa.schema(
        [
            (S.USER_ID, pa.int64()),
            (S.ASSIGN_TS, TS_UTC),
            (S.ARM, pa.string()),
            (S.ARM_INDEX, pa.int8()),
            (S.PROPENSITY, pa.float64()),
            ("usage_time", pa.float64()),
            ("video_views", pa.float64()),
        ]
    )
    e = exp.to_pandas()
    np.testing.assert_array_equal(e[S.USER_ID], exp_in["Customer ID"])
    assert list(e[S.ARM]) == [ARMS[g] for g in exp_in["grp"]]
    np.testing.assert_array_equal(e[S.ARM_INDEX], exp_in["grp"])
    assert (e[S.ASSIGN_TS] == _expected_utc(exp_in["assigned@"])).all()
    assert str(e[S.ASSIGN_TS].dt.tz) == "UTC"
    np.testing.assert_array_equal(e["usage_time"], exp_in["Watch Minutes"])
    np.testing.assert_array_equal(e["video_views"], exp_in["n views"])
    if ext == "csv":
        np.testing.assert_allclose(e[S.PROPENSITY], exp_in["p(assign)"])
    else:
        share = exp_in["grp"].map({k: v / n for k, v in ARM_SIZES.items()})
        np.testing.assert_allclose(e[S.PROPENSITY], share)

    feat = pq.read_table(out / S.FEATURES_FILE)
    assert feat.schema.names == [S.USER_ID, S.EVENT_TS, "region", "plan", "age", "spend"]
    assert feat.schema.field(S.USER_ID).type == pa.int64()
    assert feat.schema.field(S.EVENT_TS).type == TS_UTC
    assert feat.schema.field("region").type == pa.string()
    assert pa.types.is_integer(feat.schema.field("plan").type)
    assert feat.schema.field("age").type == pa.float32()
    assert feat.schema.field("spend").type == pa.float32()
    f = feat.to_pandas()
    np.testing.assert_array_equal(f[S.USER_ID], feat_in["cust"])
    want_ts = pd.to_datetime(feat_in["snap time"], format=FEATURE_FORMAT).dt.tz_localize("UTC")
    assert (f[S.EVENT_TS] == want_ts).all()
    assert list(f["region"]) == list(feat_in["Region Code"])
    np.testing.assert_array_equal(f["plan"], feat_in["plan"])
    np.testing.assert_allclose(f["spend"], feat_in["spend$"].astype(np.float32))
    np.testing.assert_allclose(f["age"], feat_in["age (yrs)"])

    req = pq.read_table(out / S.REQUESTS_FILE)
    responses = list(RESPONSES)
    list_names = S.item_columns("recent", responses) + S.item_columns("cand", responses)
    assert req.schema.names == [S.REQUEST_ID, S.USER_ID, S.REQUEST_TS, *list_names, "cand_exposed"]
    assert req.schema.field(S.REQUEST_ID).type == pa.int64()
    assert req.schema.field(S.REQUEST_TS).type == TS_UTC
    for part in ("recent", "cand"):
        dur, cat, *scores = S.item_columns(part, responses)
        assert req.schema.field(dur).type.value_type == pa.int32()
        assert req.schema.field(cat).type.value_type == pa.int32()
        for col in scores:
            assert req.schema.field(col).type.value_type == pa.float32()
    assert req.schema.field("cand_exposed").type.value_type == pa.bool_()
    r = req.to_pylist()
    assert [x[S.REQUEST_ID] for x in r] == list(req_in["req#"])
    assert [x[S.USER_ID] for x in r] == list(req_in["cust"])
    assert [x[S.REQUEST_TS] for x in r] == list(_expected_utc(req_in["when"]))
    sources = dict(zip(list_names, LIST_COLUMNS[:-1], strict=True))
    for out_col, in_col in sources.items():
        got = [x[out_col] for x in r]
        if "score" in out_col:
            np.testing.assert_allclose(
                np.concatenate(got), np.concatenate(req_in[in_col]), rtol=1e-6
            )
            assert [len(g) for g in got] == [len(v) for v in req_in[in_col]]
        else:
            assert got == list(req_in[in_col])
    assert [x["cand_exposed"] for x in r] == [[bool(b) for b in v] for v in req_in["shown"]]

    assert manifest.source == "logs"
    assert manifest.arms == ["control", "t_a", "t_b"]
    assert manifest.responses == responses
    assert [(s.name, s.kind) for s in manifest.features] == [
        ("region", "categorical"),
        ("plan", "categorical"),
        ("age", "numeric"),
        ("spend", "numeric"),
    ]
    assert manifest.n_users == n
    assert manifest.n_experiment_rows == n
    assert manifest.n_feature_rows == 2 * n
    assert manifest.n_requests == len(req_in)
    assert manifest.has_requests and not manifest.has_truth
    assert (manifest.first_snapshot, manifest.last_snapshot) == ("2026-10-30", "2026-10-31")


def test_play_labels_pass_through_for_cdum(tmp_path: Path) -> None:
    """Your own logs can feed FIC: a 0/1 played list per candidate becomes ``cand_played``, checked like exposure."""
    from pipelines.validation import ContractError

    frames = make_frames()
    played = [[int(i % 3 == 0) for i in range(len(v))] for v in frames["requests"]["shown"]]
    frames["requests"]["played?"] = played
    write_frames(frames, tmp_path, "parquet")
    out = out_dir(tmp_path)
    ingest_logs(source("parquet", **{"requests.played": "played?"}), out, tmp_path)
    req = pq.read_table(out / S.REQUESTS_FILE)
    assert req.schema.field(S.PLAYED).type.value_type == pa.bool_()
    assert req.column(S.PLAYED).to_pylist() == [[bool(b) for b in v] for v in played]

    frames["requests"]["played?"] = [[2] * len(v) if i == 2 else v for i, v in enumerate(played)]
    write_frames(frames, tmp_path, "parquet")
    with pytest.raises(ContractError, match="played\\?.*exposed value not 0/1"):
        ingest_logs(source("parquet", **{"requests.played": "played?"}), out_dir(tmp_path), tmp_path)


def test_without_requests_and_absolute_paths(tmp_path: Path) -> None:
    frames = make_frames()
    del frames["requests"]
    write_frames(frames, tmp_path, "parquet")
    logs = tmp_path / "logs"
    src = source(
        "parquet",
        requests=None,
        **{
            "experiment.path": str(logs / "experiment.parquet"),
            "features.path": str(logs / "features.parquet"),
        },
    )
    out = out_dir(tmp_path)
    (out / S.REQUESTS_FILE).write_text("stale")
    (out / S.TRUTH_FILE).write_text("stale")
    manifest = ingest_logs(src, out, Path("/nonexistent"))
    assert sorted(p.name for p in out.iterdir()) == [S.EXPERIMENT_FILE, S.FEATURES_FILE]
    assert not manifest.has_requests and manifest.n_requests == 0


def test_exact_duplicate_rows_are_dropped(tmp_path: Path) -> None:
    frames = make_frames()
    exp = frames["experiment"]
    frames["experiment"] = pd.concat([exp, exp.iloc[:3]], ignore_index=True)
    write_frames(frames, tmp_path, "csv")
    manifest = ingest_logs(source("csv"), out_dir(tmp_path), tmp_path)
    got = pq.read_table(tmp_path / "out" / S.EXPERIMENT_FILE).to_pandas()
    assert len(got) == len(exp) == manifest.n_experiment_rows
    assert got[S.USER_ID].is_unique


def test_float_arm_codes_with_missing_values(tmp_path: Path) -> None:
    """A float arm column (1.0, 2.0, NaN) still matches the text keys "1", "2"."""
    frames = make_frames()
    grp = frames["experiment"]["grp"].astype(float)
    grp.iloc[0] = np.nan
    frames["experiment"]["grp"] = grp
    write_frames(frames, tmp_path, "parquet")
    err = ingest_error(source("parquet"), tmp_path)
    assert [(p.column, p.reason, p.count) for p in err.problems] == [
        ("grp", "missing arm value", 1)
    ]


def test_csv_arm_text_values(tmp_path: Path) -> None:
    frames = make_frames()
    frames["experiment"]["grp"] = frames["experiment"]["grp"].map({0: "ctl", 1: "A", 2: "B"})
    write_frames(frames, tmp_path, "csv")
    values = {"ctl": "control", "A": "t_a", "B": "t_b"}
    manifest = ingest_logs(
        source("csv", **{"experiment.treatment.values": values}), out_dir(tmp_path), tmp_path
    )
    assert manifest.arms == ["control", "t_a", "t_b"]


# --------------------------------------------------------------------------- user ids


def test_string_user_ids_are_hashed_consistently(tmp_path: Path) -> None:
    frames = make_frames(string_ids=True)
    write_frames(frames, tmp_path, "csv")
    out = out_dir(tmp_path)
    manifest = ingest_logs(source("csv"), out, tmp_path)

    exp = pq.read_table(out / S.EXPERIMENT_FILE).to_pandas()
    feat = pq.read_table(out / S.FEATURES_FILE).to_pandas()
    req = pq.read_table(out / S.REQUESTS_FILE).to_pandas()
    user_map = pq.read_table(out / USER_MAP_FILE)
    assert user_map.schema == pa.schema([(S.USER_ID, pa.int64()), ("external_id", pa.string())])

    ext = frames["experiment"]["Customer ID"]
    want, hashed = canonical_user_ids(ext)
    assert hashed
    np.testing.assert_array_equal(exp[S.USER_ID], want)
    expected = pd.util.hash_array(ext.to_numpy(object), categorize=True).view(np.int64)
    np.testing.assert_array_equal(exp[S.USER_ID], expected)
    # Same rule in every table: features and requests join onto the experiment.
    assert set(feat[S.USER_ID]) == set(exp[S.USER_ID])
    known = set(exp[S.USER_ID])
    assert sum(u not in known for u in req[S.USER_ID]) == 2
    back = dict(
        zip(user_map[S.USER_ID].to_pylist(), user_map["external_id"].to_pylist(), strict=True)
    )
    assert [back[u] for u in exp[S.USER_ID]] == list(ext)
    assert back[req[S.USER_ID].iloc[-1]] == "u-99998-x"
    assert manifest.n_users == len(ext)


def test_integer_ids_write_no_user_map(tmp_path: Path) -> None:
    write_frames(make_frames(), tmp_path, "csv")
    out = out_dir(tmp_path)
    ingest_logs(source("csv"), out, tmp_path)
    assert not (out / USER_MAP_FILE).exists()


@pytest.mark.parametrize(
    ("values", "hashed"),
    [
        (pd.Series([3, 1, 2]), False),
        (pd.Series(["3", "1", "-2"]), False),
        (pd.Series([3.0, 1.0]), False),
        (pd.Series(["007", "7"]), True),
        (pd.Series(["a1b2", "c3d4"]), True),
        (pd.Series([1.5, 2.0]), True),
    ],
)
def test_canonical_user_ids(values: pd.Series, hashed: bool) -> None:
    ids, was_hashed = canonical_user_ids(values)
    assert ids.dtype == np.int64 and was_hashed == hashed
    if hashed:
        want = pd.util.hash_array(values.astype(str).to_numpy(object), categorize=True)
        np.testing.assert_array_equal(ids, want.view(np.int64))
        assert len(set(ids)) == len(values)
    else:
        np.testing.assert_array_equal(ids, values.astype(float).astype(np.int64))


# --------------------------------------------------------------------------- the contract


def ingest_error(src: LogsSource, base: Path) -> ContractError:
    out = out_dir(base)
    with pytest.raises(ContractError) as info:
        ingest_logs(src, out, base)
    assert list(out.iterdir()) == [], "nothing may be written when the contract is broken"
    return info.value


def problem(err: ContractError, table: str, column: str, reason: str):
    hits = [
        p for p in err.problems if p.table == table and p.column == column and reason in p.reason
    ]
    assert len(hits) == 1, f"no single {table}.{column} {reason!r} problem in:\n{err}"
    where = f"{table}.{column}" if column else table
    assert f"{where}: {hits[0].reason}" in str(err)
    return hits[0]


def _set(table: str, column: str, rows: list[int], value):
    def mutate(frames):
        df = frames[table]
        df[column] = df[column].astype(object)
        for i in rows:
            df.at[i, column] = value

    return mutate


def _drop_column(table: str, column: str):
    def mutate(frames):
        frames[table] = frames[table].drop(columns=column)

    return mutate


def _keep_arm_rows(keep: dict[int, int]):
    """Keep only the first ``keep[g]`` rows of arm g (arms not named stay whole)."""

    def mutate(frames):
        exp = frames["experiment"]
        rank = exp.groupby("grp").cumcount()
        limit = exp["grp"].map(lambda g: keep.get(g, 10**9))
        frames["experiment"] = exp[rank < limit].reset_index(drop=True)

    return mutate


def _repeat_users(rows: list[int], **changes):
    def mutate(frames):
        exp = frames["experiment"]
        extra = exp.iloc[rows].copy()
        for col, value in changes.items():
            extra[col] = value
        frames["experiment"] = pd.concat([exp, extra], ignore_index=True)

    return mutate


def _list_cell(column: str, row: int, value):
    """Replace one list cell; a callable value gets the old list (to keep its length)."""

    def mutate(frames):
        req = frames["requests"]
        req.at[row, column] = value(req.at[row, column]) if callable(value) else value

    return mutate


# (id, mutation, table, column, reason, count, total problems)
# fmt: off
CASES = [
    ("unknown-arm", _set("experiment", "grp", [0, 5, 9], 7),
     "experiment", "grp", "unknown arm value", 3, 1),
    ("unknown-arm-text", _set("experiment", "grp", [3], "treat"),
     "experiment", "grp", "unknown arm value", 1, 1),
    ("missing-arm", _set("experiment", "grp", [3, 4], np.nan),
     "experiment", "grp", "missing arm value", 2, 1),
    ("response-non-numeric", _set("experiment", "Watch Minutes", [1, 2], "lots"),
     "experiment", "Watch Minutes", "non-numeric response", 2, 1),
    ("response-nan", _set("experiment", "n views", [1, 2, 3, 4], np.nan),
     "experiment", "n views", "missing (NaN) response", 4, 1),
    ("response-negative", _set("experiment", "Watch Minutes", [7, 8, 9], -1.5),
     "experiment", "Watch Minutes", "negative response", 3, 1),
    ("response-infinite", _set("experiment", "Watch Minutes", [3], "inf"),
     "experiment", "Watch Minutes", "infinite response", 1, 1),
    ("two-arms", _repeat_users([0, 1], grp=2),
     "experiment", "Customer ID", "user assigned to more than one arm", 4, 1),
    ("repeated-user", _repeat_users([0, 1], **{"Watch Minutes": 0.5}),
     "experiment", "Customer ID", "user appears 2 times in the same arm", 4, 1),
    ("no-control", _keep_arm_rows({0: 0}),
     "experiment", "grp", "no row maps to the control arm", 0, 1),
    ("few-rows", _keep_arm_rows({2: 60}),
     "experiment", "grp", "too few rows in arm 't_b': 60 < min_rows_per_arm=100", 0, 1),
    ("empty-arm", _keep_arm_rows({1: 0}),
     "experiment", "grp", "too few rows in arm 't_a': 0 < min_rows_per_arm=100", 0, 1),
    ("bad-timestamp", _set("experiment", "assigned@", [2, 3], "yesterday"),
     "experiment", "assigned@", "unparseable or missing timestamp", 2, 1),
    ("missing-timestamp", _set("experiment", "assigned@", [4], np.nan),
     "experiment", "assigned@", "unparseable or missing timestamp", 1, 1),
    ("propensity-zero", _set("experiment", "p(assign)", [0, 1], 0.0),
     "experiment", "p(assign)", "propensity not a number in (0, 1]", 2, 1),
    ("propensity-above-one", _set("experiment", "p(assign)", [5], 1.5),
     "experiment", "p(assign)", "propensity not a number in (0, 1]", 1, 1),
    ("missing-column", _drop_column("experiment", "n views"),
     "experiment", "n views",
     "missing column (have: Customer ID, assigned@, grp, Watch Minutes, p(assign))", 0, 1),
    ("feature-non-numeric", _set("features", "spend$", [0, 10, 20], "lots"),
     "features", "spend$", "non-numeric value in a numeric feature", 3, 1),
    ("feature-timestamp", _set("features", "snap time", [1], "2026-10-30"),
     "features", "snap time",
     "unparseable or missing timestamp (expected format '%d/%m/%Y %H:%M')", 1, 1),
    ("feature-user-id", _set("features", "cust", [3, 4], np.nan),
     "features", "cust", "missing user id", 2, 1),
    ("feature-missing-column", _drop_column("features", "Region Code"),
     "features", "Region Code", "missing column", 0, 1),
    ("request-json", _list_cell("hist cat", 2, "[1, 2"),
     "requests", "hist cat", "unparseable or missing list", 1, 1),
    ("request-length", _list_cell("cands s2", 4, "[0.5]"),
     "requests", "cands s2", "list length differs from column 'cands dur'", 1, 1),
    ("request-exposed-length", _list_cell("shown", 4, "[1]"),
     "requests", "shown", "list length differs from column 'cands dur'", 1, 1),
    ("request-score", _list_cell("hist s1", 5, lambda v: [1.5, *v[1:]]),
     "requests", "hist s1", "score outside [0, 1]", 1, 1),
    ("request-exposed", _list_cell("shown", 6, lambda v: [2, *v[1:]]),
     "requests", "shown", "exposed value not 0/1", 1, 1),
    ("request-non-integer", _list_cell("hist dur", 7, lambda v: [0.5, *v[1:]]),
     "requests", "hist dur", "non-integer value inside the list", 1, 1),
    # An empty duration list also differs in length from the rest of the recent lists.
    ("request-empty", _list_cell("hist dur", 8, "[]"),
     "requests", "hist dur", "empty list", 1, 4),
    ("request-id", _set("requests", "req#", [0], "abc"),
     "requests", "req#", "request id is not an integer", 1, 1),
    ("request-duplicate-id", _set("requests", "req#", [1], 5001),
     "requests", "req#", "duplicate request id", 2, 1),
]
# fmt: on


@pytest.mark.parametrize(
    ("mutate", "table", "column", "reason", "count", "n_problems"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_contract_violation(
    tmp_path: Path, mutate, table, column, reason, count, n_problems
) -> None:
    frames = make_frames()
    mutate(frames)
    write_frames(frames, tmp_path, "csv")
    err = ingest_error(source("csv"), tmp_path)
    p = problem(err, table, column, reason)
    assert p.count == count
    assert len(err.problems) == n_problems, str(err)


def test_problem_quotes_user_ids(tmp_path: Path) -> None:
    frames = make_frames(string_ids=True)
    _repeat_users([0, 1], grp=2)(frames)
    write_frames(frames, tmp_path, "csv")
    p = problem(ingest_error(source("csv"), tmp_path), "experiment", "Customer ID", "more than one")
    assert p.examples == ["u-01001-x", "u-01002-x"]


def test_bad_values_are_quoted(tmp_path: Path) -> None:
    frames = make_frames()
    _set("experiment", "Watch Minutes", list(range(8)), -2.0)(frames)
    write_frames(frames, tmp_path, "csv")
    p = problem(ingest_error(source("csv"), tmp_path), "experiment", "Watch Minutes", "negative")
    assert p.count == 8 and p.examples == [-2.0]  # distinct values


def test_examples_are_capped(tmp_path: Path) -> None:
    frames = make_frames()
    for i in range(8):
        _set("experiment", "Watch Minutes", [i], -1.0 - i)(frames)
    write_frames(frames, tmp_path, "csv")
    p = problem(ingest_error(source("csv"), tmp_path), "experiment", "Watch Minutes", "negative")
    assert p.count == 8 and p.examples == [-1.0, -2.0, -3.0, -4.0, -5.0]  # max_examples


def test_request_list_problems_from_parquet(tmp_path: Path) -> None:
    frames = make_frames()
    req = frames["requests"]
    req.at[3, "cands s1"] = [2.0, *req.at[3, "cands s1"][1:]]
    for col in ("hist dur", "hist cat", "hist s1", "hist s2"):
        req.at[4, col] = []
    write_frames(frames, tmp_path, "parquet")
    err = ingest_error(source("parquet"), tmp_path)
    assert problem(err, "requests", "cands s1", "score outside [0, 1]").count == 1
    for col in ("hist dur", "hist cat", "hist s1", "hist s2"):
        assert problem(err, "requests", col, "empty list").count == 1
    assert len(err.problems) == 5


@pytest.mark.parametrize("kind", ["missing", "unreadable", "extension"])
def test_file_problems(tmp_path: Path, kind: str) -> None:
    write_frames(make_frames(), tmp_path, "parquet")
    over = {}
    if kind == "missing":
        (tmp_path / "logs" / "features.parquet").unlink()
        reason = "file not found"
    elif kind == "unreadable":
        (tmp_path / "logs" / "features.parquet").write_bytes(b"this is not parquet")
        reason = "cannot read"
    else:
        over = {"features.path": "logs/features.txt"}
        reason = "unsupported file type '.txt'"
    err = ingest_error(source("parquet", **over), tmp_path)
    problem(err, "features", "", reason)
    assert len(err.problems) == 1


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    frames = make_frames()
    _set("experiment", "grp", [0, 1], 9)(frames)
    _set("experiment", "n views", [2], -1.0)(frames)
    _set("features", "age (yrs)", [0], "old")(frames)
    _list_cell("cands cat", 1, "not json")(frames)
    _drop_column("requests", "when")(frames)
    write_frames(frames, tmp_path, "csv")
    err = ingest_error(source("csv"), tmp_path)
    assert problem(err, "experiment", "grp", "unknown arm value").count == 2
    assert problem(err, "experiment", "n views", "negative response").count == 1
    assert problem(err, "features", "age (yrs)", "non-numeric value").count == 1
    assert problem(err, "requests", "cands cat", "unparseable or missing list").count == 1
    problem(err, "requests", "when", "missing column")
    assert len(err.problems) == 5
    assert str(err).startswith("5 data contract problem(s):")
    assert [p.table for p in err.problems] == ["experiment"] * 2 + ["features"] + ["requests"] * 2


def test_logs_a_summary(tmp_path: Path, caplog) -> None:
    write_frames(make_frames(), tmp_path, "csv")
    with caplog.at_level("INFO", logger="fulcrum"):
        ingest_logs(source("csv"), out_dir(tmp_path), tmp_path)
    assert "read 450 experiment rows, 900 feature rows, 60 request rows" in caplog.text


# --------------------------------------------------------------------------- snapshot times (found by probing)


def test_static_features_need_no_snapshot_time(tmp_path: Path) -> None:
    frames = make_frames()
    feat = frames["features"]
    frames["features"] = feat.iloc[: len(feat) // 2].drop(columns=["snap time"])  # one row per user, no time
    write_frames(frames, tmp_path, "parquet")
    out = out_dir(tmp_path)
    ingest_logs(source("parquet", **{"features.timestamp": None, "features.timestamp_format": None}), out, tmp_path)
    got = pq.read_table(out / S.FEATURES_FILE).to_pandas()
    first_assignment = pq.read_table(out / S.EXPERIMENT_FILE).column(S.ASSIGN_TS).to_pandas().min()
    assert (got[S.EVENT_TS] < first_assignment).all() and got[S.USER_ID].is_unique


def test_static_features_with_several_rows_per_user_are_refused(tmp_path: Path) -> None:
    frames = make_frames()
    frames["features"] = frames["features"].drop(columns=["snap time"])
    write_frames(frames, tmp_path, "parquet")
    with pytest.raises(ContractError, match="several rows for a user but no features.timestamp"):
        ingest_logs(source("parquet", **{"features.timestamp": None, "features.timestamp_format": None}),
                    out_dir(tmp_path), tmp_path)


def test_snapshots_after_every_assignment_stop_ingest_with_the_reason(tmp_path: Path) -> None:
    frames = make_frames()
    feat = frames["features"]
    frames["features"] = feat.assign(**{"snap time": "15/11/2026 00:00"})  # after the whole experiment
    frames["features"] = frames["features"].drop_duplicates("cust")
    write_frames(frames, tmp_path, "parquet")
    with pytest.raises(ContractError, match=r"only 0.0% of experiment users have a feature snapshot at or before"):
        ingest_logs(source("parquet"), out_dir(tmp_path), tmp_path)
    assert not (tmp_path / "out" / S.EXPERIMENT_FILE).exists()  # nothing written
    # the same logs pass when the user says how much coverage is enough (here: none needed)
    ingest_logs(source("parquet", min_feature_coverage=0.0), out_dir(tmp_path), tmp_path)
