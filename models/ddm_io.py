"""DDM data and artifacts: request logs -> padded arrays, the checkpoint, online inference.

Three paths share one array layout (:class:`RequestArrays`):

- training reads ``requests.parquet`` with pyarrow and pads every list vectorized;
- the web service builds arrays from plain Python lists (no pandas, one request or a few);
- training and evaluation run them through the torch network (:func:`predict_weights`),
  the service through its numpy twin (:func:`weights_for_requests`, ``models.ddm_numpy``).

The checkpoint holds only tensors and plain containers (``torch.load(weights_only=True)``)
and is versioned by a content hash of its configuration and weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from fulcrum import schema as S
from models.ddm import (
    DDMNet,
    DDMNetConfig,
    RequestBatch,
    batch_from_numpy,
    exposure_labels_flat,
    value_weights,
)
from models.ddm_numpy import PARTS, NumpyDDM, ServingDDM, list_arrays
from models.ddm_numpy import weights_for_requests as models_weights

EXPOSED = "cand_exposed"
CHECKPOINT = "ddm.pt"
FORMAT = 1


# --------------------------------------------------------------------------- arrays


@dataclass
class RequestArrays:
    """Padded item lists of N requests over P parts, as numpy (the layout of :class:`RequestBatch`)."""

    duration: np.ndarray  # (N, P, L) int64 raw ids (0 in padding)
    category: np.ndarray  # (N, P, L) int64
    scores: np.ndarray  # (N, P, L, R) float32
    mask: np.ndarray  # (N, P, L) bool: True = a real item

    def __len__(self) -> int:
        return self.duration.shape[0]

    def take(self, rows: np.ndarray) -> RequestArrays:
        """Rows selected by a boolean mask or an index array."""
        return RequestArrays(self.duration[rows], self.category[rows], self.scores[rows], self.mask[rows])

    def to_batch(self, device: torch.device | str | None = None) -> RequestBatch:
        return batch_from_numpy(self.duration, self.category, self.scores, self.mask, device)


def _flat_list(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (lengths (N,) int64, values of all rows back to back); a null list is empty."""
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    values = pc.list_flatten(col)
    if values.null_count:
        raise ValueError("a list column has null entries inside its lists")
    return lengths, values.to_numpy()


def _pad(lengths: np.ndarray, values: np.ndarray, width: int, dtype) -> np.ndarray:
    """Ragged lists (flat) -> (N, width), keeping each list's first ``width`` items; zeros after."""
    n = len(lengths)
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(values)) - np.repeat(starts, lengths)  # position inside its own list
    keep = pos < width
    out = np.zeros((n, width), dtype=dtype)
    out[row[keep], pos[keep]] = values[keep]
    return out


def _as_table(frame: pa.Table | Any) -> pa.Table:
    return frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)


def arrays_from_table(
    frame: pa.Table | Any, responses: Sequence[str], max_items: int, parts: Sequence[str] = PARTS
) -> RequestArrays:
    """Request rows (pyarrow Table or pandas DataFrame with the ``requests.parquet`` columns) -> arrays.

    Lists may differ in length between rows and parts: all are padded to the longest,
    capped at ``max_items`` (longer lists keep their first ``max_items`` items).
    """
    table = _as_table(frame)
    flat: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per part: (lengths, values) per column
    for part in parts:
        cols = [_flat_list(table.column(c)) for c in S.item_columns(part, list(responses))]
        if any(not np.array_equal(cols[0][0], c[0]) for c in cols[1:]):
            raise ValueError(f"the {part}_* list columns differ in length within a request")
        flat.append(cols)
    longest = max((int(cols[0][0].max(initial=0)) for cols in flat), default=0)
    width = max(1, min(longest, max_items))
    n, n_parts, n_resp = table.num_rows, len(parts), len(responses)
    duration = np.zeros((n, n_parts, width), np.int64)
    category = np.zeros((n, n_parts, width), np.int64)
    scores = np.zeros((n, n_parts, width, n_resp), np.float32)
    mask = np.zeros((n, n_parts, width), bool)
    for p, cols in enumerate(flat):
        lengths = cols[0][0]
        duration[:, p] = _pad(lengths, cols[0][1], width, np.int64)
        category[:, p] = _pad(lengths, cols[1][1], width, np.int64)
        for r in range(n_resp):
            scores[:, p, :, r] = _pad(lengths, cols[2 + r][1], width, np.float32)
        mask[:, p] = np.arange(width)[None, :] < lengths[:, None]
    return RequestArrays(duration, category, scores, mask)


def labels_from_table(frame: pa.Table | Any, responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """DDM labels from whole candidate lists (before any truncation): (o (N, R), V (N,) exposed count)."""
    table = _as_table(frame)
    names = S.item_columns("cand", list(responses))[2:]
    lengths, exposed = _flat_list(table.column(EXPOSED))
    score_cols = [_flat_list(table.column(c)) for c in names]
    if any(not np.array_equal(lengths, ln) for ln, _ in score_cols):
        raise ValueError(f"{EXPOSED} and the candidate score lists differ in length within a request")
    scores = np.stack([v for _, v in score_cols], axis=1)  # (n_items, R)
    row = np.repeat(np.arange(len(lengths)), lengths)
    return exposure_labels_flat(scores, exposed.astype(bool), row, len(lengths))


def fic_labels_from_table(frame: pa.Table | Any, n_treatments: int) -> np.ndarray:
    """FIC's play-ratio labels (N, K) from whole candidate lists (``cand_duration``, ``cand_exposed``, ``cand_played``)."""
    from models.fic_labels import play_ratio_labels

    table = _as_table(frame)
    lengths, duration = _flat_list(table.column("cand_duration"))
    cols = [_flat_list(table.column(c)) for c in (EXPOSED, S.PLAYED)]
    if any(not np.array_equal(lengths, ln) for ln, _ in cols):
        raise ValueError(f"cand_duration, {EXPOSED} and {S.PLAYED} differ in length within a request")
    width = max(1, int(lengths.max(initial=0)))
    dur = _pad(lengths, duration, width, np.int64)
    exposed, played = (_pad(lengths, v.astype(bool), width, bool) for _, v in cols)  # padding: not exposed
    return play_ratio_labels(dur, exposed, played, n_treatments)


def read_request_table(rct_dir: Path, responses: Sequence[str], extra: Sequence[str] = ()) -> pa.Table:
    """The columns of ``requests.parquet`` DDM needs (and ``extra`` ones, e.g. FIC's ``cand_played``)."""
    cols = [S.REQUEST_ID, S.USER_ID] + [c for p in PARTS for c in S.item_columns(p, list(responses))] + [EXPOSED]
    cols += list(extra)
    return pq.read_table(rct_dir / S.REQUESTS_FILE, columns=cols)


def fit_vocab(arrays: RequestArrays) -> tuple[int, int]:
    """(n_durations, n_categories): one past the largest id among real items (negative ids ignored)."""
    m = arrays.mask
    return (int(arrays.duration[m].max(initial=-1)) + 1, int(arrays.category[m].max(initial=-1)) + 1)


# --------------------------------------------------------------------------- online requests


def arrays_from_lists(
    requests: Sequence[Sequence[Any]], responses: Sequence[str], max_items: int
) -> RequestArrays:
    """Requests as plain lists -> arrays (:func:`models.ddm_numpy.list_arrays`, which the service uses)."""
    return RequestArrays(*list_arrays(requests, responses, max_items))


# --------------------------------------------------------------------------- checkpoint


@dataclass
class LoadedDDM(ServingDDM):
    """A checkpoint: the torch network beside the numpy twin and metadata the service uses."""

    net: DDMNet

    @property
    def parts(self) -> list[str]:
        return self.meta["parts"]


def _version(identity: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    buf = io.BytesIO()
    torch.save({k: v for k, v in sorted(state.items())}, buf)
    h.update(buf.getvalue())
    return h.hexdigest()[:12]


def save_ddm(path: Path, net: DDMNet, responses: Sequence[str], max_items: int, meta: dict) -> str:
    """Write ``path`` atomically (weights only); returns the version (hash of config + weights).

    ``meta`` is stored as given (JSON-able: e.g. training config, trained_at) but not hashed,
    so retraining to identical weights keeps the version.
    """
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    identity = {
        "config": net.cfg.to_dict(), "responses": list(responses), "parts": list(PARTS), "max_items": max_items,
    }
    version = _version(identity, state)
    blob = {
        "format": FORMAT,
        "config": identity["config"],
        "state_dict": state,
        "meta": {**meta, **identity, "version": version},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return version


def load_ddm(path: Path, device: torch.device | str = "cpu") -> LoadedDDM:
    """Load weights only (``torch.load(weights_only=True)``), with the numpy forward for serving."""
    blob = torch.load(path, map_location=device, weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported DDM checkpoint format {blob.get('format')!r}")
    net = DDMNet(DDMNetConfig.from_dict(blob["config"]))
    net.load_state_dict(blob["state_dict"])
    net.to(device).eval()
    return LoadedDDM(fast=NumpyDDM.from_net(net), meta=blob["meta"], net=net)


# --------------------------------------------------------------------------- inference


def predict_weights(loaded: LoadedDDM | DDMNet, arrays: RequestArrays) -> np.ndarray:
    """Value weights w (B, R) for the requests in ``arrays`` (rows sum to 1), with the torch network."""
    net = loaded.net if isinstance(loaded, LoadedDDM) else loaded
    b = arrays.to_batch(next(net.parameters()).device)
    with torch.inference_mode():
        w = value_weights(net(b))
    return w.float().cpu().numpy()


def weights_for_requests(loaded: LoadedDDM, requests: Sequence[Sequence[Any]]) -> np.ndarray:
    """The service's numpy path on a loaded checkpoint (tests compare it with :func:`predict_weights`)."""
    return models_weights(loaded, requests)
