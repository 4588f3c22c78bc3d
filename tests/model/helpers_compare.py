"""Shared by the compare tests: a comparison killed part-way, then one that records what it trains."""

from __future__ import annotations

import pytest

from pipelines import compare as C


def kill_compare_after(monkeypatch, cfg, root, finished: int) -> None:
    """Run compare with an empty run store and kill it (KeyboardInterrupt) once ``finished`` runs are done."""
    for f in C.RunStore(cfg.paths.compare_dir(root)).folder.glob("*.npz"):
        f.unlink()
    real, calls = C.fit_predict, []

    def interrupted(prep, name, cfg_, seed):
        if len(calls) == finished:
            raise KeyboardInterrupt
        calls.append((name, seed))
        return real(prep, name, cfg_, seed)

    monkeypatch.setattr(C, "fit_predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.run_compare(cfg, root)
    monkeypatch.setattr(C, "fit_predict", real)


def record_trained(monkeypatch) -> list[tuple[str, int]]:
    """From now on, the (model, seed) of every run compare trains (finished runs it reuses are not listed)."""
    real, calls = C.fit_predict, []
    monkeypatch.setattr(C, "fit_predict", lambda *a: (calls.append(a[1:4:2]), real(*a))[1])
    return calls
