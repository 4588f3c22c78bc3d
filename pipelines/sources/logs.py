"""The logs source: the user's own RCT logs, validated and written as the canonical dataset.

Three tables are read (parquet or CSV, by file extension) and mapped onto Fulcrum's schema
(``fulcrum.schema``) with a :class:`fulcrum.config.LogsSource`:

- experiment: one row per user with the arm, the assignment time and the responses;
- features:   dated feature snapshots per user;
- requests:   optional request logs with per-request lists of videos.

Every contract problem of all three tables is collected first and raised as one
:class:`~pipelines.validation.ContractError`; nothing is written unless the data are clean.

Decisions worth knowing:

- User ids: integer ids are kept; otherwise every table's ids are hashed to int64 with the same
  rule (see :func:`canonical_user_ids`) and ``user_map.parquet`` maps them back. If any table
  has non-integer ids, all tables are hashed, so the three tables still join.
- Experiment rows that repeat exactly (same raw values in every mapped column) are dropped with
  a warning. A user on several rows that differ is a problem: in different arms "user assigned
  to more than one arm", in the same arm "user appears N times". Those problems count the rows
  involved and quote the user ids.
- Arm values are compared as text; ``1``, ``1.0`` and ``"1"`` all match the key ``"1"``, and
  ``true``/``True`` match the key ``"True"``.
- Timestamps without ``timestamp_format`` are parsed as ISO 8601; naive ones are taken as UTC.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import (
    CONTROL,
    ExperimentLogMapping,
    FeatureLogMapping,
    LogsSource,
    RequestLogMapping,
)
from pipelines.validation import ProblemLog

log = logging.getLogger("fulcrum")

USER_MAP_FILE = "user_map.parquet"
EXPOSED = "cand_exposed"

EXPERIMENT, FEATURES, REQUESTS = "experiment", "features", "requests"
_TS = pa.timestamp("us", tz="UTC")
_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)
_INT32 = np.iinfo(np.int32)
_decode_json = json.JSONDecoder().decode
# Files this source never writes; a previous (simulator) run may have left them behind.
_FOREIGN = (S.TRUTH_FILE, S.REQUESTS_TRUTH_FILE)


# --------------------------------------------------------------------------- user ids


def _parse_int64(values: pd.Series, strict_text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (no missing values) as int64 and a mask of the values that are not integers.

    Text counts as an integer when it is written like one; with ``strict_text`` a leading zero
    or sign ("007", "+7") makes it text, so that distinct external ids never collide.
    """
    dtype = values.dtype
    n = len(values)
    if pd.api.types.is_bool_dtype(dtype):
        return np.zeros(n, np.int64), np.ones(n, bool)
    if pd.api.types.is_integer_dtype(dtype):
        if pd.api.types.is_unsigned_integer_dtype(dtype):
            big = values.to_numpy() > np.iinfo(np.int64).max
            return np.where(big, 0, values.to_numpy()).astype(np.int64), big
        return values.to_numpy(dtype=np.int64), np.zeros(n, bool)
    if pd.api.types.is_float_dtype(dtype):
        x = values.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(x) | (x != np.floor(x)) | (np.abs(x) >= 2.0**63)
        return np.where(bad, 0, x).astype(np.int64), bad
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        return np.zeros(n, np.int64), np.ones(n, bool)
    try:
        text = pa.array(values.to_numpy(dtype=object), type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all str: use each value's text
        text = pa.array(values.astype(str).to_numpy(dtype=object), type=pa.string())
    text = pc.utf8_trim_whitespace(text)
    pattern = r"0|-?[1-9][0-9]*" if strict_text else r"[+-]?[0-9]+"
    ok = pc.match_substring_regex(text, f"^(?:{pattern})$").to_numpy(zero_copy_only=False)
    ok = np.asarray(ok, dtype=bool)
    out = np.zeros(n, np.int64)
    good = text.filter(pa.array(ok))
    try:
        out[ok] = pc.cast(good, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        # A "+" sign or 19+ digits: convert one by one (rare), dropping what int64 cannot hold.
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        big = [int(v) for v in good.to_pylist()]
        fits = np.array([lo <= v <= hi for v in big], dtype=bool)
        where = np.flatnonzero(ok)
        out[where[fits]] = np.array([v for v, f in zip(big, fits, strict=True) if f], np.int64)
        ok[where[~fits]] = False
    return out, ~ok


def _integer_ids(values: pd.Series, strict_text: bool = True) -> np.ndarray | None:
    """``values`` (no missing values) as int64 if every value is an integer, else None."""
    ints, bad = _parse_int64(values, strict_text)
    return None if bad.any() else ints


def _hash_ids(text: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(text.astype(object), categorize=True).view(np.int64)


def _joint_user_ids(columns: list[pd.Series]) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Canonical ids for several id columns at once: hashed for all if any is not integer.

    Returns the int64 ids per column, their external ids as text (only when hashed; else
    empty) and whether ids were hashed.
    """
    ints = [_integer_ids(c) for c in columns]
    if all(i is not None for i in ints):
        return ints, [], False
    texts = [
        i.astype(str).astype(object) if i is not None else c.astype(str).to_numpy(object)
        for i, c in zip(ints, columns, strict=True)
    ]
    return [_hash_ids(t) for t in texts], texts, True


def canonical_user_ids(series: pd.Series) -> tuple[np.ndarray, bool]:
    """Fulcrum's int64 user ids for one id column, and whether they were hashed.

    Integer columns (and text columns whose every value is written as an integer) keep their
    integers. Anything else (UUIDs, ...) is hashed with ``pandas.util.hash_array`` on the text
    of each value (default hash key, so the mapping is deterministic) and viewed as int64.
    The column must not hold missing values.
    """
    if series.isna().any():
        raise ValueError("user ids must not be missing")
    ids, _, hashed = _joint_user_ids([series])
    return ids[0], hashed


# --------------------------------------------------------------------------- reading


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _list_to_arrow(ty: pa.DataType) -> pd.ArrowDtype | None:
    if pa.types.is_list(ty) or pa.types.is_large_list(ty) or pa.types.is_fixed_size_list(ty):
        return pd.ArrowDtype(ty)
    return None


def _have(columns: list[str]) -> str:
    shown = ", ".join(columns[:30])
    return shown + (f", ... ({len(columns)} columns)" if len(columns) > 30 else "")


def _read_log(
    table: str,
    path: str,
    base_dir: Path,
    wanted: list[str],
    text_cols: list[str],
    problems: ProblemLog,
) -> pd.DataFrame | None:
    """Read the mapped columns of one log file; report a missing file or missing columns.

    CSV columns in ``text_cols`` (ids, arm) are read as text, exactly as written. Parquet list
    columns stay arrow-backed (``pd.ArrowDtype``) so that they are validated without copies.
    """
    file = _resolve(path, base_dir)
    suffix = file.suffix.lower()
    if suffix not in _PARQUET + _CSV:
        problems.add(
            table,
            "",
            f"unsupported file type {suffix or '(none)'!r} of {file} (use .parquet, .pq or .csv)",
        )
        return None
    if not file.is_file():
        problems.add(table, "", f"file not found: {file}")
        return None
    wanted = list(dict.fromkeys(wanted))
    try:
        if suffix in _PARQUET:
            have = list(pq.read_schema(file).names)
        else:
            have = [str(c) for c in pd.read_csv(file, nrows=0).columns]
        present = [c for c in wanted if c in have]
        if suffix in _PARQUET:
            df = pq.read_table(file, columns=present).to_pandas(types_mapper=_list_to_arrow)
        else:
            dtypes = {c: str for c in text_cols if c in present}
            df = pd.read_csv(file, usecols=present, dtype=dtypes, low_memory=False)
    except Exception as e:  # any reader error means the file is unreadable
        problems.add(table, "", f"cannot read {file}: {type(e).__name__}: {e}")
        return None
    for c in wanted:
        if c not in have:
            problems.add(table, c, f"missing column (have: {_have(have)})")
    return df


# --------------------------------------------------------------------------- checks


def _report(problems: ProblemLog, table: str, column: str, reason: str, values, mask) -> None:
    """Add a problem for the rows in ``mask`` (quoting distinct bad values) if there are any."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n:
        examples: list = []
        seen: set[str] = set()
        for v in pd.Series(values).iloc[np.flatnonzero(mask)[:1000]].tolist():
            if repr(v) not in seen and len(examples) < problems.max_examples:
                seen.add(repr(v))
                examples.append(v)
        problems.add(table, column, reason, examples, count=n)


def _to_float(values: pd.Series) -> np.ndarray:
    """Values as float64; anything that is not a number becomes NaN."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64)
    try:
        num = pd.to_numeric(values, errors="coerce")
    except (TypeError, ValueError):
        return np.full(len(values), np.nan)
    return pd.Series(num).to_numpy(dtype=np.float64, na_value=np.nan)


def _parse_ts(
    values: pd.Series, fmt: str | None, table: str, column: str, problems: ProblemLog
) -> pd.Series:
    """Timestamps as ``datetime64[us, UTC]``; unparseable or missing ones are reported."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        ts = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        text = values.astype(str)
        ts = pd.to_datetime(text, format=fmt or "ISO8601", utc=True, errors="coerce")
    ts = ts.dt.as_unit("us")
    want = f"format {fmt!r}" if fmt else "ISO 8601"
    _report(
        problems,
        table,
        column,
        f"unparseable or missing timestamp (expected {want})",
        values,
        ts.isna(),
    )
    return ts


def _check_user_ids(values: pd.Series, table: str, column: str, problems: ProblemLog) -> np.ndarray:
    """Rows with a user id; missing ids are reported."""
    missing = values.isna().to_numpy()
    _report(problems, table, column, "missing user id", values, missing)
    return ~missing


def _norm_key(text: str) -> str:
    """Spelling-independent form of an arm value: 1, 1.0, "1" -> "1"; True, true -> "true"."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower()
    try:
        x = float(t)
    except ValueError:
        return t
    if math.isfinite(x) and x == int(x):
        return str(int(x))
    return repr(x) if math.isfinite(x) else t


def _map_arms(values: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """Arm name per row (None for a missing or unknown value). Work is per distinct value."""
    normed = {}
    for key, arm in mapping.items():
        normed.setdefault(_norm_key(key), arm)
    lookup = {}
    for raw in values.dropna().unique():
        text = str(raw)
        lookup[raw] = mapping.get(text, normed.get(_norm_key(text)))
    return values.map(lookup).astype(object).where(values.notna(), None)


@dataclass
class _Experiment:
    rows: np.ndarray  # bool mask of rows kept (exact duplicates dropped)
    ts: pd.Series | None = None
    arm: pd.Series | None = None
    responses: dict[str, np.ndarray] | None = None
    propensity: np.ndarray | None = None


def _check_experiment(
    m: ExperimentLogMapping,
    df: pd.DataFrame,
    ids: np.ndarray,
    id_ok: np.ndarray,
    arms: list[str],
    min_rows: int,
    problems: ProblemLog,
) -> _Experiment:
    t = EXPERIMENT
    mapped = [
        c
        for c in [
            m.user_id,
            m.timestamp,
            m.treatment.column,
            *m.responses.values(),
            *([m.propensity] if m.propensity else []),
        ]
        if c in df.columns
    ]
    exact = (
        df.duplicated(subset=list(dict.fromkeys(mapped)), keep="first").to_numpy()
        if mapped
        else None
    )
    keep = ~exact if exact is not None else np.ones(len(df), bool)
    if exact is not None and exact.any():
        log.warning("experiment log: dropped %d exactly repeated rows", int(exact.sum()))
    out = _Experiment(rows=keep)

    if m.timestamp in df.columns:
        out.ts = _parse_ts(df[m.timestamp], m.timestamp_format, t, m.timestamp, problems)

    col = m.treatment.column
    if col in df.columns:
        raw = df[col]
        arm = _map_arms(raw, m.treatment.values)
        missing = raw.isna().to_numpy()
        unknown = ~missing & arm.isna().to_numpy()
        _report(problems, t, col, "missing arm value", raw, missing)
        expected = ", ".join(repr(k) for k in m.treatment.values)
        _report(problems, t, col, f"unknown arm value (expected one of: {expected})", raw, unknown)
        out.arm = arm
        counts = arm[keep].value_counts()
        for name in arms:
            n = int(counts.get(name, 0))
            if name == CONTROL and n == 0:
                problems.add(t, col, "no row maps to the control arm")
            elif n < min_rows:
                problems.add(
                    t, col, f"too few rows in arm {name!r}: {n} < min_rows_per_arm={min_rows}"
                )

        # Users on several (non-identical) rows.
        sel = keep & id_ok
        if sel.any():
            frame = pd.DataFrame(
                {"u": ids[sel], "arm": arm.to_numpy()[sel], "ext": df[m.user_id].to_numpy()[sel]}
            )
            grouped = frame.groupby("u", sort=False)
            size = grouped["u"].transform("size").to_numpy()
            n_arms = grouped["arm"].transform("nunique").to_numpy()
            multi = n_arms > 1
            _report_users(
                problems, t, m.user_id, "user assigned to more than one arm", frame, multi
            )
            repeated = (size > 1) & ~multi
            if repeated.any():
                most = int(size[repeated].max())
                reason = (
                    f"user appears {most} times"
                    if (size[repeated] == most).all()
                    else f"user appears up to {most} times"
                )
                _report_users(
                    problems,
                    t,
                    m.user_id,
                    reason + " in the same arm with differing rows",
                    frame,
                    repeated,
                )

    responses = {}
    for name, col in m.responses.items():
        if name in (S.USER_ID, S.ASSIGN_TS, S.ARM, S.ARM_INDEX, S.PROPENSITY):
            problems.add(t, col, f"response name {name!r} clashes with a canonical column")
        if col not in df.columns:
            continue
        raw = df[col]
        y = _to_float(raw)
        missing = raw.isna().to_numpy()
        nan = np.isnan(y)
        with np.errstate(invalid="ignore"):
            _report(problems, t, col, "missing (NaN) response", raw, missing)
            _report(problems, t, col, "non-numeric response", raw, nan & ~missing)
            _report(problems, t, col, "infinite response", raw, np.isinf(y))
            _report(problems, t, col, "negative response", raw, y < 0)
        responses[name] = y
    out.responses = responses

    if m.propensity and m.propensity in df.columns:
        raw = df[m.propensity]
        p = _to_float(raw)
        with np.errstate(invalid="ignore"):
            bad = ~((p > 0) & (p <= 1))
        _report(problems, t, m.propensity, "propensity not a number in (0, 1]", raw, bad)
        out.propensity = p
    return out


def _report_users(
    problems: ProblemLog,
    table: str,
    column: str,
    reason: str,
    frame: pd.DataFrame,
    mask: np.ndarray,
) -> None:
    """A per-user problem: counts the rows involved, quotes distinct (external) user ids."""
    n = int(mask.sum())
    if n:
        users = pd.unique(frame["ext"].to_numpy()[mask])[: problems.max_examples]
        problems.add(table, column, reason, list(users), count=n)


@dataclass
class _Features:
    ts: pd.Series | None = None
    columns: dict[str, pa.Array] | None = None
    specs: list[S.FeatureSpec] | None = None


def _categorical_array(values: pd.Series) -> pa.Array:
    """A categorical column kept as given: integers stay integers (nullable), the rest is text."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return pa.array(values)
    nonnull = values.dropna()
    if pd.api.types.is_float_dtype(dtype):
        x = nonnull.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(x) & (x == np.floor(x))):
            return pa.array(values.astype("Int64"))
        return pa.array(values)
    if len(nonnull) and pd.api.types.infer_dtype(nonnull, skipna=True) == "integer":
        return pa.array(values.astype("Int64"))
    text = values.astype(str).astype(object).where(values.notna(), None)
    return pa.array(text.to_numpy(), type=pa.string())


def _check_features(m: FeatureLogMapping, df: pd.DataFrame, problems: ProblemLog) -> _Features:
    t = FEATURES
    out = _Features(columns={}, specs=[])
    if m.timestamp is not None and m.timestamp in df.columns:
        out.ts = _parse_ts(df[m.timestamp], m.timestamp_format, t, m.timestamp, problems)
    for kind, mapping in (("categorical", m.categorical), ("numeric", m.numeric)):
        for name, col in mapping.items():
            out.specs.append(S.FeatureSpec(name=name, kind=kind))
            if name in (S.USER_ID, S.EVENT_TS):
                problems.add(t, col, f"feature name {name!r} clashes with a canonical column")
            if col not in df.columns:
                continue
            raw = df[col]
            if kind == "numeric":
                x = _to_float(raw)
                _report(
                    problems,
                    t,
                    col,
                    "non-numeric value in a numeric feature",
                    raw,
                    np.isnan(x) & raw.notna().to_numpy(),
                )
                out.columns[name] = pa.array(x.astype(np.float32))
            else:
                out.columns[name] = _categorical_array(raw)
    return out


# --------------------------------------------------------------------------- request lists


@dataclass
class _Lists:
    raw: pd.Series
    lengths: np.ndarray  # int64 per row; -1 = not a list
    values: np.ndarray  # float64, all rows' elements one after another; NaN = not a number

    def element_rows(self, bad: np.ndarray) -> np.ndarray:
        """Row mask of the rows holding any element flagged in ``bad``."""
        rows = np.repeat(np.arange(len(self.lengths)), np.maximum(self.lengths, 0))
        out = np.zeros(len(self.lengths), bool)
        out[rows[bad]] = True
        return out

    def arrow(self, dtype: np.dtype) -> pa.ListArray:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        if offsets[-1] <= np.iinfo(np.int32).max:
            offsets = offsets.astype(np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(self.values.astype(dtype)))
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(self.values.astype(dtype)))


def _json_list(cell) -> list | None:
    """One list cell (JSON text or a sequence) as a list; None when it is not a list."""
    if isinstance(cell, str):
        try:
            cell = _decode_json(cell)
        except ValueError:
            return None
    elif isinstance(cell, (np.ndarray, tuple)):
        cell = list(cell)
    return cell if isinstance(cell, list) else None


def _as_numbers(flat: list) -> np.ndarray:
    """List elements as float64; anything but a number (or bool) becomes NaN."""
    try:
        arr = np.array(flat)
    except (ValueError, OverflowError):  # ragged nested lists, huge integers
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    # Some element is null, text or a list: check one by one (only for such broken columns).
    return np.array(
        [float(v) if isinstance(v, (int, float)) else math.nan for v in flat], dtype=np.float64
    )


def _parse_lists(raw: pd.Series) -> _Lists:
    """List cells of one column: parquet lists directly, JSON text (CSV) parsed cell by cell."""
    dtype = raw.dtype
    if isinstance(dtype, pd.ArrowDtype) and _list_to_arrow(dtype.pyarrow_dtype) is not None:
        arr = pa.array(raw.array)
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy().astype(np.int64)
        flat = pc.list_flatten(arr)
        ty = flat.type
        if pa.types.is_integer(ty) or pa.types.is_floating(ty) or pa.types.is_boolean(ty):
            values = pc.cast(flat, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        else:
            values = np.full(len(flat), np.nan)
        return _Lists(raw, lengths, np.asarray(values, dtype=np.float64))
    parsed = [_json_list(cell) for cell in raw.to_numpy(dtype=object)]
    lengths = np.fromiter((-1 if p is None else len(p) for p in parsed), np.int64, len(parsed))
    values = _as_numbers(list(chain.from_iterable(p for p in parsed if p is not None)))
    return _Lists(raw, lengths, values)


@dataclass
class _Requests:
    request_id: np.ndarray | None = None
    ts: pd.Series | None = None
    lists: dict[str, _Lists] | None = None  # output column -> parsed lists
    dtypes: dict[str, np.dtype] | None = None


def _check_lists(col: str, lists: _Lists, kind: str, problems: ProblemLog) -> None:
    t = REQUESTS
    raw, lengths, v = lists.raw, lists.lengths, lists.values
    _report(
        problems,
        t,
        col,
        "unparseable or missing list (expected a JSON array of numbers)",
        raw,
        lengths < 0,
    )
    _report(problems, t, col, "empty list", raw, lengths == 0)
    nan = np.isnan(v)
    _report(
        problems, t, col, "non-numeric or null value inside the list", raw, lists.element_rows(nan)
    )
    with np.errstate(invalid="ignore"):
        if kind == "int":
            bad = ~nan & ((v != np.floor(v)) | (v < _INT32.min) | (v > _INT32.max))
            reason = "non-integer value inside the list"
        elif kind == "score":
            bad = ~nan & ((v < 0) | (v > 1))
            reason = "score outside [0, 1]"
        else:
            bad = ~nan & (v != 0) & (v != 1)
            reason = "exposed value not 0/1"
    _report(problems, t, col, reason, raw, lists.element_rows(bad))


def _check_requests(
    m: RequestLogMapping, responses: list[str], df: pd.DataFrame, problems: ProblemLog
) -> _Requests:
    t = REQUESTS
    out = _Requests(lists={}, dtypes={})
    if m.request_id in df.columns:
        raw = df[m.request_id]
        missing = raw.isna().to_numpy()
        _report(problems, t, m.request_id, "missing request id", raw, missing)
        ids = np.zeros(len(raw), np.int64)
        present = raw[~missing]
        as_int, bad = _parse_int64(present, strict_text=False)
        _report(problems, t, m.request_id, "request id is not an integer", present, bad)
        ids[~missing] = as_int
        dup = pd.Series(as_int).duplicated(keep=False).to_numpy() & ~bad
        _report(problems, t, m.request_id, "duplicate request id", present, dup)
        out.request_id = ids
    if m.timestamp in df.columns:
        out.ts = _parse_ts(df[m.timestamp], m.timestamp_format, t, m.timestamp, problems)

    parsed: dict[str, _Lists] = {}
    checked: set[tuple[str, str]] = set()
    for part, items in (("recent", m.recent), ("cand", m.candidates)):
        names = S.item_columns(part, responses)
        sources = [
            (names[0], items.duration_bucket, "int", np.int32),
            (names[1], items.category, "int", np.int32),
        ]
        sources += [
            (names[2 + r], items.scores[resp], "score", np.float32)
            for r, resp in enumerate(responses)
        ]
        if part == "cand":
            sources.append((EXPOSED, m.exposed, "exposed", np.bool_))
            if m.played:  # FIC's play labels (CDUM), checked like the exposure flags
                sources.append((S.PLAYED, m.played, "exposed", np.bool_))
        ref: tuple[str, _Lists] | None = None
        for out_name, col, kind, dtype in sources:
            if col not in df.columns:
                continue
            if col not in parsed:
                parsed[col] = _parse_lists(df[col])
            lists = parsed[col]
            if (col, kind) not in checked:
                checked.add((col, kind))
                _check_lists(col, lists, kind, problems)
            if ref is None:
                ref = (col, lists)
            elif col != ref[0]:
                a, b = lists.lengths, ref[1].lengths
                _report(
                    problems,
                    t,
                    col,
                    f"list length differs from column {ref[0]!r}",
                    lists.raw,
                    (a >= 0) & (b >= 0) & (a != b),
                )
            out.lists[out_name] = lists
            out.dtypes[out_name] = dtype
    return out


# --------------------------------------------------------------------------- writing


def _write(out_dir: Path, tables: dict[str, pa.Table], remove: list[str]) -> None:
    """Write all tables under temporary names, then rename them into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for name, table in tables.items():
            tmp = out_dir / f".{name}.tmp"
            pq.write_table(table, tmp, compression="snappy")
            staged[name] = tmp
        for name, tmp in staged.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    for name in remove:
        (out_dir / name).unlink(missing_ok=True)


def _ts_array(ts: pd.Series) -> pa.Array:
    return pa.array(ts, type=_TS)


# --------------------------------------------------------------------------- entry point


def _check_snapshot_times(src: LogsSource, f: _Features, feat_uid: np.ndarray, exp_uid: np.ndarray,
                          assign_ts: pd.Series, problems: ProblemLog) -> None:
    """Features must be known before the assignment they describe; static features get a time.

    Without ``features.timestamp`` the features are static: one row per user, stamped a day
    before the first assignment. With it, at least ``min_feature_coverage`` of the experiment
    users need a snapshot at or before their assignment: a model trained on users without
    features learns nothing (and later snapshots may carry the treatment's effect).
    """
    col = src.features.timestamp
    if col is None:
        dup = pd.Series(feat_uid).duplicated(keep=False).to_numpy()
        if dup.any():
            problems.add(FEATURES, src.features.user_id, "several rows for a user but no features.timestamp "
                         "(static features need one row per user; else map the snapshot time)",
                         list(pd.unique(feat_uid[dup]))[: src.max_examples], count=int(dup.sum()))
        f.ts = pd.Series(assign_ts.min() - pd.Timedelta(days=1), index=range(len(feat_uid))).dt.as_unit("us")
        return
    first = pd.Series(f.ts.to_numpy()).groupby(feat_uid).min()
    known = pd.Series(exp_uid).map(first)
    ok = (known.to_numpy() <= assign_ts.to_numpy())  # NaT (no snapshot at all) compares False
    share = float(ok.mean()) if len(ok) else 1.0
    if share < src.min_feature_coverage:
        problems.add(
            FEATURES, col,
            f"only {share:.1%} of experiment users have a feature snapshot at or before their assignment "
            f"(need {src.min_feature_coverage:.0%}, source.min_feature_coverage): snapshots run "
            f"{f.ts.min():%Y-%m-%d %H:%M} to {f.ts.max():%Y-%m-%d %H:%M}, assignments "
            f"{assign_ts.min():%Y-%m-%d %H:%M} to {assign_ts.max():%Y-%m-%d %H:%M}. Features must be logged "
            "before the assignment; for static features leave features.timestamp out",
            list(pd.unique(exp_uid[~ok]))[: src.max_examples], count=int((~ok).sum()))
    elif share < 1.0:
        log.warning("logs source: %d experiment users (%.1f%%) have no feature snapshot at or before their "
                    "assignment: they train and score on unknown features", int((~ok).sum()), 100 * (1 - share))


def ingest_logs(src: LogsSource, out_dir: Path, base_dir: Path) -> S.Manifest:
    """Validate the user's logs against Fulcrum's data contract and write the canonical dataset.

    Raises :class:`~pipelines.validation.ContractError` listing every problem found (nothing is
    written then). The manifest is returned, not written.
    """
    problems = ProblemLog(src.max_examples)
    em, fm, rm = src.experiment, src.features, src.requests
    responses = list(em.responses)
    arms = em.treatment.arms()

    exp_cols = [em.user_id, em.timestamp, em.treatment.column, *em.responses.values()]
    exp_cols += [em.propensity] if em.propensity else []
    exp = _read_log(
        EXPERIMENT, em.path, base_dir, exp_cols, [em.user_id, em.treatment.column], problems
    )
    feat_cols = [fm.user_id, *([fm.timestamp] if fm.timestamp else []), *fm.categorical.values(),
                 *fm.numeric.values()]
    feat = _read_log(FEATURES, fm.path, base_dir, feat_cols, [fm.user_id], problems)
    req = None
    if rm is not None:
        req_cols = [
            rm.request_id,
            rm.user_id,
            rm.timestamp,
            rm.recent.duration_bucket,
            rm.recent.category,
            *rm.recent.scores.values(),
            rm.candidates.duration_bucket,
            rm.candidates.category,
            *rm.candidates.scores.values(),
            rm.exposed,
            *([rm.played] if rm.played else []),
        ]
        req = _read_log(
            REQUESTS, rm.path, base_dir, req_cols, [rm.request_id, rm.user_id], problems
        )

    def rows(df: pd.DataFrame | None) -> str:
        return "-" if df is None else str(len(df))

    log.info(
        "logs source: read %s experiment rows, %s feature rows, %s request rows",
        rows(exp),
        rows(feat),
        rows(req) if rm is not None else "no",
    )

    for name, df in ((EXPERIMENT, exp), (FEATURES, feat)):
        if df is not None and len(df) == 0:
            problems.add(name, "", "the table has no rows")

    # User ids: one rule for all tables so that they join.
    id_tables = [(EXPERIMENT, exp, em.user_id), (FEATURES, feat, fm.user_id)]
    if rm is not None:
        id_tables.append((REQUESTS, req, rm.user_id))
    id_ok: dict[str, np.ndarray] = {}
    raw_ids: dict[str, pd.Series] = {}
    for name, df, col in id_tables:
        if df is not None and col in df.columns:
            id_ok[name] = _check_user_ids(df[col], name, col, problems)
            raw_ids[name] = df[col][id_ok[name]]
    ids_list, ext_list, hashed = _joint_user_ids(list(raw_ids.values()))
    user_ids: dict[str, np.ndarray] = {}
    for name, got in zip(raw_ids, ids_list, strict=True):
        full = np.zeros(len(id_ok[name]), np.int64)
        full[id_ok[name]] = got
        user_ids[name] = full

    e = f = r = None
    if exp is not None:
        ok = id_ok.get(EXPERIMENT, np.zeros(len(exp), bool))
        e = _check_experiment(
            em,
            exp,
            user_ids.get(EXPERIMENT, np.zeros(len(exp), np.int64)),
            ok,
            arms,
            src.min_rows_per_arm,
            problems,
        )
    if feat is not None:
        f = _check_features(fm, feat, problems)
    if req is not None and rm is not None:
        r = _check_requests(rm, responses, req, problems)
    # Report table by table (file-level problems were found while reading all files first).
    order = {EXPERIMENT: 0, FEATURES: 1, REQUESTS: 2}
    problems.problems.sort(key=lambda p: order.get(p.table, 3))
    problems.raise_if_any()
    # From here on every table was read and has every mapped column, all values are valid.
    assert exp is not None and feat is not None and e is not None and f is not None

    keep = e.rows
    _check_snapshot_times(src, f, user_ids[FEATURES], user_ids[EXPERIMENT][keep], e.ts[keep], problems)
    problems.raise_if_any()
    arm = e.arm[keep].to_numpy(dtype=object)
    index_of = {name: i for i, name in enumerate(arms)}
    arm_idx = pd.Series(arm).map(index_of).to_numpy(dtype=np.int8)
    if e.propensity is not None:
        propensity = e.propensity[keep]
    else:
        shares = np.bincount(arm_idx, minlength=len(arms)) / max(len(arm_idx), 1)
        propensity = shares[arm_idx]
    exp_uid = user_ids[EXPERIMENT][keep]
    experiment = {
        S.USER_ID: pa.array(exp_uid, pa.int64()),
        S.ASSIGN_TS: _ts_array(e.ts[keep]),
        S.ARM: pa.array(arm.tolist(), pa.string()),
        S.ARM_INDEX: pa.array(arm_idx, pa.int8()),
        S.PROPENSITY: pa.array(propensity.astype(np.float64)),
    }
    for name in responses:
        experiment[name] = pa.array(e.responses[name][keep], pa.float64())

    features = {S.USER_ID: pa.array(user_ids[FEATURES], pa.int64()), S.EVENT_TS: _ts_array(f.ts)}
    features.update(f.columns)
    tables = {S.EXPERIMENT_FILE: pa.table(experiment), S.FEATURES_FILE: pa.table(features)}

    n_requests = 0
    if r is not None and req is not None:
        n_requests = len(req)
        if n_requests:
            cols = {
                S.REQUEST_ID: pa.array(r.request_id, pa.int64()),
                S.USER_ID: pa.array(user_ids[REQUESTS], pa.int64()),
                S.REQUEST_TS: _ts_array(r.ts),
            }
            for out_name, lists in r.lists.items():
                cols[out_name] = lists.arrow(r.dtypes[out_name])
            tables[S.REQUESTS_FILE] = pa.table(cols)

    if hashed:
        user_map = pd.DataFrame(
            {
                S.USER_ID: np.concatenate(ids_list),
                "external_id": np.concatenate([np.asarray(x, dtype=object) for x in ext_list]),
            }
        ).drop_duplicates(S.USER_ID)
        tables[USER_MAP_FILE] = pa.table(
            {
                S.USER_ID: pa.array(user_map[S.USER_ID].to_numpy(), pa.int64()),
                "external_id": pa.array(user_map["external_id"].astype(str).tolist(), pa.string()),
            }
        )

    remove = [*_FOREIGN, *(n for n in (S.REQUESTS_FILE, USER_MAP_FILE) if n not in tables)]
    _write(out_dir, tables, remove)

    return S.Manifest(
        source="logs",
        arms=arms,
        responses=responses,
        features=f.specs,
        n_users=int(pd.unique(exp_uid).size),
        n_experiment_rows=int(len(exp_uid)),
        n_feature_rows=len(feat),
        n_requests=n_requests,
        has_truth=False,
        has_requests=n_requests > 0,
        first_snapshot=f.ts.min().strftime("%Y-%m-%d"),
        last_snapshot=f.ts.max().strftime("%Y-%m-%d"),
    )
