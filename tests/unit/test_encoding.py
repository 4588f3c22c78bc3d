import numpy as np
import pandas as pd

from models.encoding import FieldEncoder
from models.target import TargetTransform


def _frame():
    return pd.DataFrame({"c": ["a", "b", "a", "c"], "k": [1, 2, 2, 3], "x": [0.0, 1.0, 2.0, 100.0]})


def test_buckets_offsets_and_unknowns():
    enc = FieldEncoder(["c", "k"], ["x"], n_bins=2).fit(_frame())
    out = enc.transform(pd.DataFrame({"c": ["a", "zz", None], "k": [3, 9, 1], "x": [-5.0, np.nan, 1e9]}))
    # Per-field ranges never overlap: each field's ids lie in [offset, offset + size).
    for j in range(3):
        assert ((out[:, j] >= enc.offsets_[j]) & (out[:, j] < enc.offsets_[j] + enc.sizes_[j])).all()
    local = out - enc.offsets_
    assert local[0, 0] == 1 and local[1, 0] == 0 and local[2, 0] == 0  # unseen / missing -> 0
    assert local[0, 1] == 3 and local[1, 1] == 0
    assert local[1, 2] == 0  # NaN -> missing bucket
    assert local[0, 2] == 1 and local[2, 2] == enc.sizes_[2] - 1  # below / above every edge
    assert out.max() < enc.vocab_size


def test_numeric_buckets_are_monotone_and_state_round_trips():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.lognormal(0, 1, 1000)})
    enc = FieldEncoder([], ["x"], n_bins=8).fit(df)
    xs = np.sort(df["x"].to_numpy())
    b = enc.transform(pd.DataFrame({"x": xs}))[:, 0]
    assert (np.diff(b) >= 0).all() and len(np.unique(b)) == 8
    again = FieldEncoder.from_state(enc.state())
    assert (again.transform(df) == enc.transform(df)).all()


def test_target_transform_round_trip_and_positive():
    y = np.abs(np.random.default_rng(1).normal(5, 3, (100, 2)))
    for kind in ("mean", "log1p"):
        t = TargetTransform.fit(kind, y)
        z = t.encode(y)
        assert abs(z.mean() - 1) < 1e-5
        assert np.allclose(t.decode(z), y, rtol=1e-4)
        assert TargetTransform.from_state(t.state()) == t
    assert (TargetTransform.fit("log1p", y).decode(np.full((1, 2), 1e-4)) > 0).all()
