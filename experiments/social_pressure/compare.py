"""Stage ``compare`` of the social-pressure experiment: HUM vs every baseline and established peers.

On the experiment's user split (one split for every model and seed), each model is
trained once per seed and scored on the test voters:

- every neural model of ``models.registry.NEURAL_MODELS`` (the HUM family and the neural
  baselines; variants added to the registry are picked up), trained by
  ``pipelines.train.train_net`` on the experiment's configuration, whose ``train``
  section is the project's: ``hum`` is the default HUM;
- the project's GBM baselines ``gbm_s_learner`` / ``gbm_t_learner`` (``models/gbm.py``,
  through ``pipelines.compare.fit_predict``);
- the established peers: causalml's S-, T- and X-learner on LightGBM (``peers.py``).

Per arm (each mailing vs control, response ``voted``): QINI, AUUC and LIFT@30 of
``fulcrum.metrics.per_arm_table`` on each model's own score (δ = ŷ_k / ŷ_0 − 1 for
Fulcrum's models, τ̂ = ŷ_k − ŷ_0 for the peers) and, for the models that give outcomes
(networks and peers), the same metrics ranked by the absolute uplift ŷ_k − ŷ_0. Then
``reference`` (``hum``) minus every other model, paired by seed, and against the peers a
95 % bootstrap interval of the seed-averaged difference that resamples test
*households* (the experiment randomized households; voters of one household share
their mailing and mostly their turnout, so resampling voters would understate the
spread).

Records are written as each (model, seed) finishes to
``<reports>/compare<suffix>_runs.json`` with the test scores in
``<data>/compare_scores<suffix>/``; a rerun skips the records whose setup (data, split,
configuration, code) is unchanged. ``--users N`` (a household subsample) gets its own
files (suffix ``_<N>u``), so a smoke run never mixes with the full one.

    python -m experiments.social_pressure.compare                     # the full run (hours)
    python -m experiments.social_pressure.compare --users 40000 --seeds 1 --epochs 3 \\
        --models hum gbm_t_learner lgbm_x_learner                     # a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from experiments.social_pressure.peers import PEERS, CausalMLPeer, causalml_version
from experiments.social_pressure.prepare import household_of
from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.metrics import per_arm_table, qini_auc_score
from pipelines import reporting as rp
from pipelines.compare import METRICS, aggregate, fit_predict
from pipelines.training_set import Prepared, prepare

log = logging.getLogger("fulcrum")

GBM_MODELS = ("gbm_s_learner", "gbm_t_learner")
ABS = {m: f"{m}_abs" for m in METRICS}  # the same metrics ranked by ŷ_k − ŷ_0
REPO = Path(__file__).resolve().parents[2]
NEURAL_CODE = ("models", "pipelines/train.py", "pipelines/training_set.py")
GBM_CODE = ("models/gbm.py", "pipelines/compare.py")
PEER_CODE = ("experiments/social_pressure/peers.py",)


def neural_models() -> tuple[str, ...]:
    from models.registry import NEURAL_MODELS

    return tuple(NEURAL_MODELS)


def default_models() -> list[str]:
    """Every neural model of the registry, the project's GBM baselines, the peers."""
    return [*neural_models(), *GBM_MODELS, *PEERS]


def kind_of(name: str) -> str:
    """"gbm", "peer" or "neural"; a neural model may carry train overrides (``hum+offset_mean=1``)."""
    if name in GBM_MODELS:
        return "gbm"
    if name in PEERS:
        return "peer"
    from models.variants import split_variant

    if split_variant(name)[0] in neural_models():
        return "neural"
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(default_models())} "
                     "(a neural model may add train overrides: hum+offset_mean=1)")


def variant_train(name: str, cfg: FulcrumConfig):
    """A neural model name (``hum`` or ``hum+offset_mean=1``) -> (registry model, its train section)."""
    from models.variants import split_variant, with_overrides

    model, over = split_variant(name)
    return model, with_overrides(cfg.train, over)


# --------------------------------------------------------------------------- data


def subsample(prep: Prepared, users: int, seed: int = 0) -> Prepared:
    """Whole households, drawn at random until ``users`` voters; same split, encoder and target.

    The split is a hash of each voter id, so every kept voter keeps its part, and the
    encoder and target transform fitted on the full training part saw no test voter.
    """
    hh = household_of(prep.frame[S.USER_ID].to_numpy())
    codes, inv = np.unique(hh, return_inverse=True)
    sizes = np.bincount(inv)
    order = np.random.default_rng(seed).permutation(len(codes))
    n_keep = int(np.searchsorted(np.cumsum(sizes[order]), users)) + 1
    keep = np.zeros(len(codes), bool)
    keep[order[:n_keep]] = True
    rows = keep[inv]
    frame = prep.frame[rows].reset_index(drop=True)
    return Prepared(frame, prep.manifest, prep.split[rows], prep.encoder, prep.target)


def load_prepared(cfg: FulcrumConfig, root: Path, users: int | None) -> Prepared:
    """The training frame of the ingested data (the training_set stage's), split and encoded."""
    rct = cfg.paths.rct_dir(root)
    if not (rct / S.MANIFEST_FILE).exists():
        raise FileNotFoundError(f"no data in {rct}: run `python -m experiments.social_pressure.prepare` first")
    prep = prepare(rct, cfg.train.split, cfg.seed, cfg.train.n_bins, target=cfg.train.target, cfg=cfg, root=root)
    if users is not None and users < len(prep.frame):
        prep = subsample(prep, users)
    return prep


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _code_digest(paths: tuple[str, ...]) -> str:
    files: list[Path] = []
    for p in paths:
        path = REPO / p
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return _digest(*(f"{f.relative_to(REPO)}:{f.read_bytes().hex()}" for f in files if f.exists()))


def setup_ids(prep: Prepared, cfg: FulcrumConfig, lgbm: dict) -> dict[str, str]:
    """What a record depends on, per model kind: a record with another id is stale."""
    data = _digest(prep.x, prep.arm, prep.y, prep.split, json.dumps(prep.target.state(), sort_keys=True, default=str),
                   cfg.evaluate.lift_k)
    return {
        "neural": _digest(data, cfg.train.model_dump_json(), _code_digest(NEURAL_CODE)),
        "gbm": _digest(data, _code_digest(GBM_CODE)),
        "peer": _digest(data, json.dumps(lgbm, sort_keys=True), causalml_version(), _code_digest(PEER_CODE)),
    }


# --------------------------------------------------------------------------- one run


def fit_scores(prep: Prepared, name: str, cfg: FulcrumConfig, seed: int, lgbm: dict) -> tuple[dict, dict]:
    """Train ``name`` with ``seed``; test scores {"delta": δ, "abs": ŷ_k − ŷ_0} (what it has), and facts."""
    test = prep.rows("test")
    kind = kind_of(name)
    if kind == "gbm":
        delta, _ = fit_predict(prep, name, cfg, seed)
        return {"delta": delta}, {}
    if kind == "peer":
        x = prep.x - prep.encoder.offsets_[None, :]  # per-field bucket ids, as the GBM baselines
        train = prep.rows("train")
        peer = CausalMLPeer.from_name(name, lgbm, seed).fit(x[train], prep.arm[train], prep.y[train])
        return {"abs": peer.predict(x[test])}, {"propensity": {str(k): v for k, v in peer.propensity_.items()}}
    import torch

    from models.base import relative_uplift
    from models.train import predict_mu
    from pipelines.train import train_net

    net, _, res = train_net(prep, *variant_train(name, cfg), seed)
    mu = predict_mu(net, torch.from_numpy(prep.x[test]), prep.target)  # (n, K+1, R), response units
    delta = relative_uplift(torch.from_numpy(mu)).numpy()
    info = {"best_epoch": res.best_epoch, "epochs_run": len(res.history)}
    return {"delta": delta, "abs": mu[:, 1:] - mu[:, :1]}, info


def primary_score(scores: dict) -> np.ndarray:
    """The model's own score: δ for Fulcrum's models, τ̂ for the peers."""
    return scores["delta"] if "delta" in scores else scores["abs"]


def cell_metrics(y, arm, scores: dict, man: S.Manifest, k: float) -> list[dict]:
    cells = per_arm_table(y, arm, primary_score(scores), man.arms, man.responses, k=k)
    if "abs" in scores:
        by_abs = per_arm_table(y, arm, scores["abs"], man.arms, man.responses, k=k)
        for c, a in zip(cells, by_abs, strict=True):
            c.update({ABS[m]: a[m] for m in METRICS})
    return cells


# --------------------------------------------------------------------------- records


class Runs:
    """``<reports>/compare<suffix>_runs.json``: one record per (model, seed), written as each finishes."""

    def __init__(self, path: Path, scores_dir: Path):
        self.path, self.scores_dir = path, scores_dir
        self.records: dict[str, dict] = {}
        if path.exists():
            self.records = json.loads(path.read_text()).get("records", {})

    @staticmethod
    def key(model: str, seed: int) -> str:
        return f"{model}/seed{seed}"

    def score_path(self, model: str, seed: int) -> Path:
        return self.scores_dir / f"{model}__seed{seed}.npz"

    def done(self, model: str, seed: int, setup: str) -> bool:
        rec = self.records.get(self.key(model, seed))
        return bool(rec) and rec.get("setup") == setup and self.score_path(model, seed).exists()

    def add(self, record: dict, scores: dict) -> None:
        self.scores_dir.mkdir(parents=True, exist_ok=True)
        target = self.score_path(record["model"], record["seed"])
        tmp = target.with_name(target.stem + ".tmp.npz")
        np.savez_compressed(tmp, **{k: v.astype(np.float32) for k, v in scores.items()})
        os.replace(tmp, target)
        self.records[self.key(record["model"], record["seed"])] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = self.path.with_name(self.path.name + ".tmp")
        tmp_json.write_text(json.dumps({"records": self.records}, indent=1) + "\n")
        os.replace(tmp_json, self.path)

    def scores(self, model: str, seed: int) -> dict:
        with np.load(self.score_path(model, seed)) as z:
            return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- paired differences


def _cell_rows(arm: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero((arm == 0) | (arm == k))
    return rows, (arm[rows] == k).astype(int)


def household_bootstrap(y: np.ndarray, t: np.ndarray, household: np.ndarray, ref: list[np.ndarray],
                        others: dict[str, list[np.ndarray]], n_boot: int, seed: int) -> dict[str, list[float]]:
    """95 % intervals of mean_s QINI(ref_s) − mean_s QINI(other_s), resampling households.

    ``y``, ``t``, ``household`` and every score vector are the rows of one cell (control
    ∪ arm k, one response). Every model is scored on the same resample (paired).
    """
    _, inv = np.unique(household, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sizes = np.bincount(inv)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {name: [] for name in others}

    def mean_qini(scores: list[np.ndarray], idx: np.ndarray) -> float:
        return float(np.mean([qini_auc_score(y[idx], s[idx], t[idx]) for s in scores]))

    for _ in range(n_boot):
        pick = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[pick]
        # Row positions of the picked households, one after another.
        pos = np.repeat(starts[pick] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        idx = order[pos]
        q_ref = mean_qini(ref, idx)
        for name, scores in others.items():
            diffs[name].append(q_ref - mean_qini(scores, idx))
    return {name: [float(v) for v in np.quantile(d, [0.025, 0.975])] for name, d in diffs.items() if d}


def paired(ref_cells: dict[int, list[dict]], other_cells: dict[int, list[dict]], metric_ref: str,
           metric_other: str) -> list[dict] | None:
    """Per cell: reference − other on common seeds, {"per_seed", "mean", "std", "wins", "n"}."""
    seeds = sorted(set(ref_cells) & set(other_cells))
    if not seeds or metric_ref not in ref_cells[seeds[0]][0] or metric_other not in other_cells[seeds[0]][0]:
        return None
    out = []
    for i in range(len(ref_cells[seeds[0]])):
        d = np.array([ref_cells[s][i][metric_ref] - other_cells[s][i][metric_other] for s in seeds])
        out.append({"per_seed": dict(zip(map(str, seeds), d.round(6).tolist(), strict=True)),
                    "mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                    "wins": int((d >= 0).sum()), "n": len(d)})
    return out


# --------------------------------------------------------------------------- the run


def run(cfg: FulcrumConfig, root: Path = Path("."), models: list[str] | None = None, seeds: list[int] | None = None,
        users: int | None = None, bootstrap: int = 200, reference: str = "hum", lgbm: dict | None = None,
        force: bool = False) -> dict:
    """Train what is missing, then write the summary JSON and the Markdown tables; returns the summary."""
    from experiments.social_pressure.settings import LGBMParams

    models = list(models or default_models())
    for m in models:
        if kind_of(m) == "neural":
            variant_train(m, cfg)  # fail fast on a bad override, before hours of training
    seeds = list(seeds or [1, 2, 3])
    lgbm = dict(lgbm or LGBMParams().model_dump())
    suffix = f"_{users}u" if users else ""
    reports = cfg.paths.reports_dir(root)
    runs = Runs(reports / f"compare{suffix}_runs.json", Path(root) / cfg.paths.data / f"compare_scores{suffix}")

    t0 = time.perf_counter()
    prep = load_prepared(cfg, root, users)
    man = prep.manifest
    test = prep.rows("test")
    y, arm = prep.y[test], prep.arm[test]
    household = household_of(prep.frame.loc[test, S.USER_ID].to_numpy())
    setups = setup_ids(prep, cfg, lgbm)
    log.info("social pressure compare: %s voters (%s test), %d models × %d seeds, setup %s (%.1f s to load)",
             f"{len(prep.frame):,}", f"{int(test.sum()):,}", len(models), len(seeds), setups, time.perf_counter() - t0)

    for seed in seeds:  # seed-major: every model has a first seed early
        for name in models:
            # A variant's record depends on its overrides too (they are in its name).
            setup = setups[kind_of(name)] if "+" not in name else _digest(setups["neural"], name)
            if not force and runs.done(name, seed, setup):
                log.info("compare: %s seed %d: done before, skipped", name, seed)
                continue
            log.info("compare: %s seed %d ...", name, seed)
            t1 = time.perf_counter()
            scores, info = fit_scores(prep, name, cfg, seed, lgbm)
            seconds = time.perf_counter() - t1
            cells = cell_metrics(y, arm, scores, man, cfg.evaluate.lift_k)
            runs.add({"model": name, "seed": seed, "kind": kind_of(name), "setup": setup, "seconds": round(seconds, 2),
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info, "cells": cells},
                     scores)
            log.info("compare: %s seed %d: QINI %s (%.0f s)", name, seed,
                     " ".join(f"{c['treatment']} {c['qini']:+.4f}" for c in cells), seconds)

    summary = summarize(runs, models, seeds, reference, y, arm, household, man, bootstrap, cfg.seed)
    summary.update({"n_users": len(prep.frame), "n_test": int(test.sum()),
                    "n_test_households": int(np.unique(household).size), "users": users, "setup": setups,
                    "lgbm": lgbm, "causalml": causalml_version(), "train": cfg.train.model_dump(),
                    "test_ate": _test_ate(y, arm, man)})
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"compare{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (reports / f"compare{suffix}.md").write_text(markdown(summary))
    log.info("social pressure compare: written %s and %s", reports / f"compare{suffix}.md",
             reports / f"compare{suffix}.json")
    return summary


def _test_ate(y, arm, man: S.Manifest) -> dict:
    return {treat: {resp: float(y[arm == k, r].mean() - y[arm == 0, r].mean()) for r, resp in enumerate(man.responses)}
            for k, treat in enumerate(man.treatments, start=1)}


def summarize(runs: Runs, models: list[str], seeds: list[int], reference: str, y, arm, household, man: S.Manifest,
              n_boot: int, boot_seed: int) -> dict:
    """Aggregates, paired differences, bootstrap intervals against the peers and the target verdict."""
    cells: dict[str, dict[int, list[dict]]] = {}
    seconds: dict[str, list[float]] = {}
    for name in models:
        for seed in seeds:
            rec = runs.records.get(runs.key(name, seed))
            if rec:
                cells.setdefault(name, {})[seed] = rec["cells"]
                seconds.setdefault(name, []).append(rec["seconds"])
    own = aggregate({m: [by_seed[s] for s in sorted(by_seed)] for m, by_seed in cells.items()})
    by_abs = aggregate({m: [[{**c, **{x: c[ABS[x]] for x in METRICS}} for c in by_seed[s]] for s in sorted(by_seed)]
                        for m, by_seed in cells.items() if ABS["qini"] in next(iter(by_seed.values()))[0]})
    first = next(iter(cells.values()), {})
    keys = [rp.cell_key(c) for c in first[min(first)]] if first else []

    diffs: dict = {}
    intervals: dict = {}
    ref = cells.get(reference)
    if ref:
        peers = [p for p in PEERS if p in cells]
        for variant, metric in (("own", "qini"), ("abs", ABS["qini"])):
            diffs[variant] = {}
            for other in cells:
                if other == reference:
                    continue
                other_metric = metric if variant == "abs" else "qini"
                d = paired(ref, cells[other], metric, other_metric)
                if d is not None:
                    diffs[variant][other] = dict(zip(keys, d, strict=True))
            # Seeds every peer and the reference have (all of them once the run is complete).
            common = sorted(set(ref).intersection(*(cells[p] for p in peers)))
            if n_boot and peers and common and metric in ref[common[0]][0]:
                intervals[variant] = _peer_intervals(runs, reference, peers, common, variant, y, arm, household,
                                                     man, n_boot, boot_seed)
    target = _target(own, own, diffs.get("own", {}), intervals.get("own", {}), reference, keys)
    # The same verdict with the reference ranked by ŷ_k − ŷ_0, the peers' kind of score (τ̂): QINI
    # counts incremental voters, which a relative δ ranks as low-turnout voters first.
    target_abs = _target(own, by_abs, diffs.get("abs", {}), intervals.get("abs", {}), reference, keys)
    return {"reference": reference, "seeds": seeds, "models": own, "models_abs": by_abs, "paired": diffs,
            "bootstrap": {"resamples": n_boot, "unit": "household", "intervals": intervals}, "target": target,
            "target_abs": target_abs,
            "train_seconds": {m: float(np.mean(s)) for m, s in seconds.items()},
            "missing": [runs.key(m, s) for m in models for s in seeds if runs.key(m, s) not in runs.records]}


def _peer_intervals(runs: Runs, reference: str, peers: list[str], seeds: list[int], variant: str, y, arm, household,
                    man: S.Manifest, n_boot: int, boot_seed: int) -> dict:
    """{peer: {cell: [lo, hi]}} for reference − peer (seed-averaged QINI), households resampled."""
    def score(name: str, seed: int) -> np.ndarray:
        s = runs.scores(name, seed)
        return s["abs"] if variant == "abs" or "delta" not in s else s["delta"]

    ref_scores = {s: score(reference, s) for s in seeds}
    peer_scores = {p: {s: score(p, s) for s in seeds} for p in peers}
    out: dict[str, dict] = {p: {} for p in peers}
    for k, treat in enumerate(man.treatments, start=1):
        rows, t = _cell_rows(arm, k)
        for r, resp in enumerate(man.responses):
            others = {p: [peer_scores[p][s][rows, k - 1, r] for s in seeds] for p in peers}
            ref = [ref_scores[s][rows, k - 1, r] for s in seeds]
            ci = household_bootstrap(y[rows, r], t, household[rows], ref, others, n_boot, boot_seed + k)
            for p, lohi in ci.items():
                out[p][f"{treat}__{resp}"] = lohi
    return out


def _target(own: dict, ranked: dict, diffs: dict, intervals: dict, reference: str, keys: list[str]) -> dict:
    """Per cell: the best peer by its mean QINI (``own``) and whether the reference, ranked as in
    ``ranked`` (its own score, or ŷ_k − ŷ_0), is ≥ it, paired by seed (``diffs`` of that ranking)."""
    out = {}
    peers = [p for p in PEERS if p in own]
    if reference not in ranked or not peers:
        return out
    for key in keys:
        best = max(peers, key=lambda p: own[p][key]["qini"][0])
        d = diffs.get(best, {}).get(key)
        out[key] = {"best_peer": best, "reference_qini": ranked[reference][key]["qini"],
                    "best_peer_qini": own[best][key]["qini"], "paired_diff": d,
                    "interval": intervals.get(best, {}).get(key),
                    "met": bool(d is not None and d["mean"] >= 0)}
    return out


# --------------------------------------------------------------------------- report


def _diff_text(d: dict, ci: list[float] | None) -> str:
    s = f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['wins']}/{d['n']})"
    return s + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def markdown(s: dict) -> str:
    ref = s["reference"]
    cells = list(next(iter(s["models"].values()))) if s["models"] else []
    header = [" / ".join(reversed(c.split("__"))) for c in cells]  # response / treatment, as rp.metric_tables
    lines = [
        "# Social pressure (Gerber, Green & Larimer 2008): HUM vs baselines and established peers",
        "",
        f"{s['n_users']:,} voters, {s['n_test']:,} test voters in {s['n_test_households']:,} households; "
        f"seeds {s['seeds']}; mean ± std over seeds. One split for every model and seed. "
        f"Peers: causalml {s['causalml']} S-, T-, X-learner on LightGBM. "
        "Naive ATE on the test voters: "
        + ", ".join(f"{t} {v[next(iter(v))]:+.4f}" for t, v in s["test_ate"].items()) + ".",
        "",
        "## Each model's own score (δ = ŷ_k / ŷ_0 − 1 for Fulcrum's models, τ̂ for the peers)",
        "",
        rp.metric_tables(s["models"], list(METRICS)) if s["models"] else "(no runs yet)",
    ]
    if s["models_abs"]:
        lines += ["## Ranked by the absolute uplift ŷ_k − ŷ_0 (models that give outcomes)", "",
                  rp.metric_tables(s["models_abs"], ["qini"])]
    for variant, title in (("own", f"{ref} (δ)"), ("abs", f"{ref} (ŷ_k − ŷ_0)")):
        d = s["paired"].get(variant, {})
        if not d:
            continue
        ci = s["bootstrap"]["intervals"].get(variant, {})
        peers = [p for p in PEERS if p in d]
        rest = [m for m in d if m not in PEERS]
        lines += [f"## {title} − model: QINI paired by seed", "",
                  "mean ± std of the per-seed differences (seeds where the reference is ≥), "
                  "[95 % interval of the seed-averaged difference, households resampled]", ""]
        for group in (peers, rest):
            if group:
                rows = [[m] + [_diff_text(d[m][c], ci.get(m, {}).get(c)) for c in cells] for m in group]
                lines += [rp.markdown_table(["model"] + header, rows), ""]
    for key, how in (("target", "ranked by its own score δ"), ("target_abs", "ranked by ŷ_k − ŷ_0")):
        if not s.get(key):
            continue
        rows = [[" / ".join(reversed(c.split("__"))), t["best_peer"], rp.fmt(*t["reference_qini"]), rp.fmt(*t["best_peer_qini"]),
                 _diff_text(t["paired_diff"], t["interval"]) if t["paired_diff"] else "n/a",
                 "yes" if t["met"] else "**no**"] for c, t in s[key].items()]
        lines += [f"## Target: {ref} ≥ the best peer's QINI per arm, paired by seed ({ref} {how})", "",
                  rp.markdown_table(["arm", "best peer", f"{ref} QINI", "peer QINI", "paired difference", "met"],
                                    rows), ""]
    lines += ["Training seconds per run: " + ", ".join(f"{m} {v:.0f}" for m, v in s["train_seconds"].items()), ""]
    if s["missing"]:
        lines += [f"Missing runs: {', '.join(s['missing'])}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    from experiments.social_pressure import settings

    ap = argparse.ArgumentParser(
        prog="python -m experiments.social_pressure.compare",
        description="HUM vs every baseline and causalml's LightGBM peers on the social-pressure RCT "
                    "(per-arm QINI / AUUC / LIFT@30, paired by seed).",
        epilog=f"Models (default: all): {', '.join(default_models())}.")
    ap.add_argument("--params", type=Path, default=None, help=f"the overlay (default {settings.OVERLAY})")
    ap.add_argument("--models", nargs="+", default=None, help="models to run (default: the overlay's, else all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the overlay's)")
    ap.add_argument("--users", type=int, default=None,
                    help="a random subsample of this many voters (whole households) for a smoke run")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs for the networks")
    ap.add_argument("--bootstrap", type=int, default=None, help="household resamples (0: none)")
    ap.add_argument("--force", action="store_true", help="retrain even the records that are up to date")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"train.epochs": args.epochs} if args.epochs else None
    cfg, st = settings.load(Path("."), overlay=args.params, overrides=overrides)
    s = run(cfg, Path("."), models=args.models or st.models, seeds=args.seeds or st.seeds,
            users=args.users if args.users is not None else st.users,
            bootstrap=st.bootstrap if args.bootstrap is None else args.bootstrap, reference=st.reference,
            lgbm=st.lgbm.model_dump(), force=args.force)
    for how, verdict in (("δ", s["target"]), ("ŷ_k − ŷ_0", s["target_abs"])):
        for key, t in verdict.items():
            log.info("target %s (%s by %s): %.4f vs best peer %s %.4f -> %s", key, s["reference"], how,
                     t["reference_qini"][0], t["best_peer"], t["best_peer_qini"][0], "met" if t["met"] else "not met")


if __name__ == "__main__":
    main()
