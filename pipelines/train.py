"""Stage ``train``: fit HUM (or a baseline, by name) on the RCT training split.

Writes ``<data>/model/model.pt`` (weights-only checkpoint with encoder, config and
target scale), ``<reports>/train.json`` (DVC metrics) and the per-epoch history
(DVC plot data).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig, TrainConfigModel
from fulcrum.errors import StageError
from fulcrum.metrics import mean_qini, per_arm_table
from fulcrum.progress import progress
from pipelines.crossfit import (
    CROSSFIT_FILE,
    TRAIN,
    VALID,
    CrossFit,
    check_folds,
    fold_of,
    fold_seed,
    fold_valid_share,
    member_split,
    out_of_fold,
)
from pipelines.training_set import Prepared, prepare

if TYPE_CHECKING:  # models.registry pulls in torch: imported where a model is built
    from models.registry import Dims

log = logging.getLogger("fulcrum")
CHECKPOINT = "model.pt"


def validation_scorer(prep: Prepared, k: float = 0.3):
    """δ on the validation split -> mean normalized QINI over treatments × responses."""
    rows = prep.rows("valid")
    y, arm, man = prep.y[rows], prep.arm[rows], prep.manifest

    def score(delta: np.ndarray) -> float:
        return mean_qini(per_arm_table(y, arm, delta, man.arms, man.responses, k=k))

    return score


def dims_of(prep: Prepared) -> Dims:
    """The models' input dimensions (``models.registry.Dims``) of a prepared set, with its id layout."""
    from models.registry import Dims

    man = prep.manifest
    return Dims(prep.x.shape[1], prep.encoder.vocab_size, len(man.treatments), len(man.responses),
                tuple(int(s) for s in prep.encoder.sizes_))


def model_hp(responses: Sequence[str], tc: TrainConfigModel) -> dict:
    """``tc`` as the models' hyper-parameters: ``positive_part``'s response names as indices into ``responses``
    (the data's, in column order)."""
    responses = list(responses)
    unknown = [r for r in tc.positive_part if r not in responses]
    if unknown:
        raise StageError(f"train.positive_part names {', '.join(unknown)}, not a response of this data "
                         f"({', '.join(responses)})")
    return {**tc.model_dump(), "positive_part": [responses.index(r) for r in tc.positive_part]}


# A treatment whose zero share differs from control's by more than this many standard errors moves the
# zeros: fitting the positive part alone would miss that part of its effect.
ZERO_SHARE_MAX_Z = 4.0


def check_positive_part(prep: Prepared, columns: list[int]) -> None:
    """Refuse ``train.positive_part`` on a response that is binary, has no zeros, or whose zero share
    a treatment moves (two-proportion z over the training rows above ``ZERO_SHARE_MAX_Z``)."""
    rows = prep.rows("train")
    y, arm, man = prep.y[rows], prep.arm[rows], prep.manifest
    for r in columns:
        name, zero = man.responses[r], y[:, r] == 0
        if np.unique(y[:, r]).size <= 2:
            raise StageError(f"train.positive_part: {name} takes two values; a binary response has no amount part")
        if not zero.any():
            raise StageError(f"train.positive_part: {name} has no zero in the training rows; nothing to leave out")
        n0, p0 = (arm == 0).sum(), zero[arm == 0].mean()
        for k, t in enumerate(man.treatments, start=1):
            nk, pk = (arm == k).sum(), zero[arm == k].mean()
            pooled = zero[(arm == 0) | (arm == k)].mean()
            se = np.sqrt(pooled * (1 - pooled) * (1 / max(n0, 1) + 1 / max(nk, 1)))
            z = abs(pk - p0) / se if se > 0 else 0.0
            if z > ZERO_SHARE_MAX_Z:
                raise StageError(f"train.positive_part: {t} moves {name}'s zero share ({pk:.2%} against control's "
                                 f"{p0:.2%}, z {z:.1f} > {ZERO_SHARE_MAX_Z}); fitting the positive part alone would "
                                 f"miss that effect: take {name} out of train.positive_part")
        log.info("positive_part: %s fitted on its positive rows (zero share %.2f%% in control)", name, 100 * p0)


def check_loss_fits_responses(prep: Prepared, name: str, tc: TrainConfigModel) -> None:
    """Check the loss suits the responses: ``train.positive_part`` (``check_positive_part``), and refuse
    ``train.huber_delta`` where a response takes two values: on a binary outcome (most rows
    at one value) the linear part fits something near its median, not its mean, so δ would be wrong
    without any sign of it. Read from the model's own constructor arguments (``net_config``), so a model
    that keeps the squared error whatever the setting (hum_paper, the baselines) is never refused."""
    from models.registry import net_config

    conf = net_config(name, dims_of(prep), model_hp(prep.manifest.responses, tc))
    if conf.get("positive_part"):
        check_positive_part(prep, conf["positive_part"])
    delta = conf.get("huber_delta")
    if delta is None:
        return
    binary = [r for r, col in zip(prep.manifest.responses, prep.y.T, strict=True) if np.unique(col).size <= 2]
    if binary:
        raise StageError(f"train.huber_delta is {delta}, but response(s) {', '.join(binary)} take two "
                         "values: the robust loss is for continuous responses (it would not estimate a binary "
                         "outcome's mean); set train.huber_delta: null")


MEMBER_SEED_STRIDE = 1000  # ensemble member m trains with seed + 1000·m: never another repeat's or fold's seed


def train_net(prep: Prepared, name: str, tc: TrainConfigModel, seed: int,
              lr_schedule: tuple[float, ...] | None = None):
    """Build model ``name`` from ``tc`` and fit it; returns (net, net_config, TrainResult).

    With no validation rows in ``prep`` all ``tc.epochs`` run, at ``lr_schedule`` when given.
    ``tc.ensemble`` > 1: that many networks are fit one after the other, each with its own seed
    (its own initial weights, batch order and early stopping: measured more diverse, so better
    averaged, than members trained side by side), and returned as one ``models.ensemble.Ensemble``.
    """
    check_loss_fits_responses(prep, name, tc)
    if tc.ensemble == 1:
        return with_arm_snapshots([_fit_one(prep, name, tc, seed, lr_schedule)])[0]
    from models.ensemble import Ensemble
    from models.train import ensemble_result

    one = tc.model_copy(update={"ensemble": 1})
    preps = [member_prep(prep, tc, seed + MEMBER_SEED_STRIDE * m, m) for m in range(tc.ensemble)]
    fits = with_arm_snapshots([
        _fit_one(part, name, one, seed + MEMBER_SEED_STRIDE * m, lr_schedule, f" (member {m + 1} of {tc.ensemble})")
        for m, part in enumerate(preps)])
    net = Ensemble([n for n, _, _ in fits]).eval()
    if all(p is prep for p in preps):
        at_best = shared_validation(net, prep)
    else:
        at_best = out_of_bag_validation(prep, preps, list(net.members))
    return net, {**fits[0][1], "members": tc.ensemble}, ensemble_result([r for _, _, r in fits], at_best)


def shared_validation(net, prep: Prepared) -> dict:
    """The validation loss (the members' mean, ``Ensemble.loss``) and QINI of an ensemble whose members share
    ``prep``'s split, on its validation users."""
    from models.train import predict_uplift, validation_loss

    at_best = {"val_loss": float("nan"), "val_qini": float("nan")}
    valid = prep.tensors("valid")
    if len(valid):
        valid = valid.to(next(net.parameters()).device)
        at_best["val_loss"] = validation_loss(net, valid)
        if every_arm_validated(prep):
            at_best["val_qini"] = float(validation_scorer(prep)(predict_uplift(net, valid.x, prep.target)))
    return at_best


def out_of_bag_validation(prep: Prepared, preps: list[Prepared], members: list) -> dict:
    """The validation loss and QINI of an ensemble whose members have their own users (``member_valid: own``),
    out of bag: the users no member trained on are too few to judge it (about (share of valid)^M of them:
    21 of 24,555 with 5 members at 200k users), so, as a random forest's out-of-bag error does, each user who
    was a validation user of some member is judged by the members that did not train on them.
    Loss: each member's on its own validation users (the ensemble's loss is the members' mean), row-weighted.
    QINI: of δ from the mean expected outcome of the members that held each such user out."""
    import torch

    from models.base import relative_uplift
    from models.train import predict_mu, validation_loss

    device = next(members[0].parameters()).device
    losses, sizes = [], []
    mu_sum: np.ndarray | None = None
    held_out = np.zeros(len(prep.split), dtype=np.int64)  # (N,) members that held each user out
    for net, part in zip(members, preps, strict=True):
        rows = part.rows("valid")
        valid = part.tensors("valid").to(device)
        if not len(valid):
            continue
        losses.append(validation_loss(net, valid))
        sizes.append(len(valid))
        mu = predict_mu(net, valid.x)  # (n_m, K+1, R), model units: averaged before decoding, as Ensemble does
        if mu_sum is None:
            mu_sum = np.zeros((len(prep.split), *mu.shape[1:]), dtype=np.float64)
        mu_sum[rows] += mu
        held_out[rows] += 1
    at_best = {"val_loss": float(np.average(losses, weights=sizes)) if sizes else float("nan"), "val_qini": float("nan")}
    oob = held_out > 0
    judge = prep.with_split(np.where(oob, VALID, np.where(prep.split == VALID, TRAIN, prep.split)))
    if mu_sum is not None and every_arm_validated(judge):
        mu = torch.from_numpy(mu_sum[oob] / held_out[oob, None, None]).float()
        delta = relative_uplift(prep.target.decode(mu) if prep.target is not None else mu).numpy()
        at_best["val_qini"] = float(validation_scorer(judge)(delta))
    log.info("ensemble: judged out of bag on %s users, each by the members that held them out (%.1f on average)",
             f"{int(oob.sum()):,}", float(held_out[oob].mean()) if oob.any() else 0.0)
    return at_best


def every_arm_validated(prep: Prepared) -> bool:
    """Whether every arm has validation rows: a QINI per treatment needs its treated and its control users."""
    return bool((prep.arm_counts(prep.rows("valid")) > 0).all())


def member_prep(prep: Prepared, tc: TrainConfigModel, member_seed: int, m: int) -> Prepared:
    """Ensemble member ``m``'s data: ``prep`` itself, or with ``train.member_valid: own`` and m > 0 its train and
    valid users dealt again by the member's seed (``pipelines.crossfit.member_split``); member 0 keeps the split,
    so it is the network an ensemble of 1 fits."""
    if tc.member_valid == "shared" or m == 0:
        return prep
    return prep.with_split(member_split(prep.split, prep.frame[S.USER_ID].to_numpy(np.int64), member_seed))


def _fit_one(prep: Prepared, name: str, tc: TrainConfigModel, seed: int, lr_schedule: tuple[float, ...] | None,
             label: str = ""):
    """One network of model ``name``, built from ``tc`` with ``seed`` and fit: (net, net_config, TrainResult)."""
    import torch

    from models.distributed import rank_and_world
    from models.registry import build_net, net_config
    from models.train import TrainConfig, fit, pick_device, seed_everything

    conf = net_config(name, dims_of(prep), model_hp(prep.manifest.responses, tc))
    per_arm, min_z = per_arm_select(tc, prep)
    device = pick_device("cpu" if rank_and_world()[1] > 1 else tc.device)  # the group's gloo reduces CPU tensors
    seed_everything(seed)  # weights are drawn at construction
    net = build_net(name, conf).to(device)
    run = TrainConfig(
        epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay,
        offset_weight_decay=tc.offset_weight_decay, offset_wide_lr=tc.offset_wide_lr,
        offset_wide_step=tc.offset_wide_step, select=tc.select,
        min_epochs=tc.min_epochs, early_stopping_patience=tc.early_stopping_patience, plateau_factor=tc.plateau_factor,
        plateau_patience=tc.plateau_patience, seed=seed, device=str(device), lr_schedule=lr_schedule, ema=tc.ema,
        per_arm_select=per_arm, per_arm_min_z=min_z,
    )
    with progress(f"training {name}{label}", tc.epochs, "epochs") as advance:
        res = fit(net, prep.tensors("train"), prep.tensors("valid"), run, validation_scorer(prep), advance,
                  target=prep.target)
    torch.set_grad_enabled(True)
    if res.arm_states:
        log.info("training %s%s: best epoch %d; treatments' epochs %s", name, label, res.best_epoch,
                 ", ".join(f"t{k + 1} {e} (z {z:.2f})" for k, (e, z) in enumerate(zip(res.arm_epochs, res.arm_z))))
    return net, conf, res


def with_arm_snapshots(fits: list[tuple]) -> list[tuple]:
    """The (net, config, TrainResult) of a model's networks, each wrapped with its per-treatment snapshots
    (``arm_selected``) when any network takes some treatment's effect from another epoch than its best:
    all or none, so an ensemble's members share one config. None moved: the networks as trained (no
    extra inference)."""
    if not any(r.arm_states and r.arm_epochs != [r.best_epoch] * len(r.arm_epochs) for _, _, r in fits):
        return fits
    return [(arm_selected(net, r.arm_states), {**conf, "arm_select": True}, r) for net, conf, r in fits]


def per_arm_select(tc: TrainConfigModel, prep: Prepared) -> tuple[bool, float | None]:
    """``train.per_arm_select`` resolved for this data: (on, the z a treatment's own epoch needs).

    ``true``: every treatment takes its own arm's best epoch. ``auto``: on when every treated arm has at
    least ``per_arm_min_valid_rows`` validation rows (the smallest size measured), and then a treatment
    leaves the best epoch only where its own epoch beats it on its arm's rows by a paired z ≥
    ``per_arm_min_z`` (README "HUM variants"). Says why when ``auto`` stays off."""
    if tc.per_arm_select != "auto":
        return bool(tc.per_arm_select), None
    counts = prep.arm_counts(prep.rows("valid"))[1:]  # treated arms only
    on = bool(len(counts) and counts.min() >= tc.per_arm_min_valid_rows)
    if not on and len(counts):
        log.info("per_arm_select auto: off (the smallest treated arm has %d validation rows, below "
                 "train.per_arm_min_valid_rows %d)", int(counts.min()), tc.per_arm_min_valid_rows)
    return on, (tc.per_arm_min_z if on else None)


def arm_selected(net, states: list[dict]):
    """``net`` (the best epoch's weights) with one copy per treatment holding ``states[k]``
    (``models.arm_select.ArmSelected``)."""
    import copy

    from models.arm_select import ArmSelected

    copies = []
    for state in states:
        one = copy.deepcopy(net)
        one.load_state_dict(state)
        copies.append(one)
    return ArmSelected(net, copies).eval()


MIN_ROWS_PER_ARM_AND_SPLIT = 5  # fewer cannot give a validation criterion or any metric


def check_splits(prep: Prepared, minimum: int = MIN_ROWS_PER_ARM_AND_SPLIT) -> None:
    """Every arm needs rows in every split: else StageError naming the split and the arm."""
    short = []
    for part in ("train", "valid", "test"):
        counts = prep.arm_counts(prep.rows(part))
        short += [f"{part}/{arm}: {int(n)}" for arm, n in zip(prep.manifest.arms, counts, strict=True) if n < minimum]
    if short:
        raise StageError(f"too few users to train and judge a model ({len(prep.frame):,} users): each arm needs at "
                         f"least {minimum} users in each split, found " + ", ".join(short)
                         + " (more users, or another train.split)")


def cross_fit_net(prep: Prepared, name: str, tc: TrainConfigModel, seed: int, folds: int,
                  repeats: int) -> CrossFit:
    """Fold models of ``name`` over ``repeats`` fold assignments: every user's ŷ from a model that never saw them.

    Each fold model trains on the other folds, early-stopping on a validation share of them
    equal to ``train.split``'s valid / (train + valid).
    """
    import torch

    from models.train import predict_mu

    valid_share = fold_valid_share(tc.split)
    fold_seeds = [fold_seed(seed, r) for r in range(repeats)]
    model_seeds = [seed + r for r in range(repeats)]
    check_folds(prep, folds, fold_seeds, MIN_ROWS_PER_ARM_AND_SPLIT)
    # Combined-arm users get their own fold's model too, so that every user's μ̂ is a function
    # of their features and fold only, never of the arm they were logged in (DR needs that).
    other_user = prep.others[S.USER_ID].to_numpy(np.int64)
    other_x = torch.from_numpy(prep.encoder.transform(prep.others)) if len(other_user) else None
    best, lrs, mus, val, other_mus = [], [], [], [], []
    for r, (fs, ms) in enumerate(zip(fold_seeds, model_seeds, strict=True)):
        count = iter(range(folds))
        other_fold = fold_of(other_user, folds, fs)
        other_mu = np.full((len(other_user), len(prep.manifest.arms), len(prep.manifest.responses)), np.nan)

        def fit_predict(part: Prepared, model_seed: int, r=r, count=count, other_fold=other_fold,
                        other_mu=other_mu) -> np.ndarray:
            k = next(count)
            log.info("cross-fit %s: repeat %d of %d, fold %d of %d", name, r + 1, repeats, k + 1, folds)
            net, _, res = train_net(part, name, tc, model_seed)
            if other_x is not None and (other_fold == k).any():
                other_mu[other_fold == k] = predict_mu(net, other_x[torch.from_numpy(other_fold == k)], part.target)
            best.append(res.best_epoch)
            val.append(list(res.validation()))
            used = [tc.lr] + [h["lr"] for h in res.history[:-1]]  # a row's lr is the one set for the next epoch
            lrs.append(used + [np.nan] * (tc.epochs - len(used)))
            test = part.rows("test")
            return predict_mu(net, torch.from_numpy(part.x[test]), part.target)  # (n_k, K+1, R)

        mus.append(out_of_fold(prep, fit_predict, folds, fs, valid_share, ms))
        other_mus.append(other_mu)
    return CrossFit(prep.frame[S.USER_ID].to_numpy(np.int64), np.stack(mus).astype(np.float32), folds, fold_seeds,
                    model_seeds, np.asarray(best).reshape(repeats, folds), np.asarray(lrs, dtype=np.float64),
                    np.asarray(val, dtype=np.float64).reshape(repeats, folds, 2), other_user,
                    np.stack(other_mus).astype(np.float32))


def fit_for_protocol(cfg: FulcrumConfig, prep: Prepared, name: str, tc: TrainConfigModel, out_dir: Path):
    """Fit the daily model under ``evaluate.protocol``; returns (net, net_config, TrainResult, CrossFit | None).

    holdout: trained on the train split, early-stopped on the valid split, judged on the test
    split. cross_fit: fold models give every user an out-of-fold ŷ (saved as ``crossfit.npz``
    in ``out_dir`` for evaluate and policy), then the daily model is fit on every user for the
    fold models' median epoch count and learning-rate schedule.
    """
    from models.distributed import is_main

    ec = cfg.evaluate
    stale = out_dir / CROSSFIT_FILE
    if ec.protocol_for(len(prep.frame)) == "holdout":
        check_splits(prep)
        if is_main():
            stale.unlink(missing_ok=True)  # evaluate must not pick up an earlier cross-fit
        net, conf, res = train_net(prep, name, tc, cfg.seed)
        return net, conf, res, None
    cf = cross_fit_net(prep, name, tc, cfg.seed, ec.folds, ec.repeats)
    if is_main():
        cf.save(stale)
    epochs, schedule = cf.final_schedule(tc.epochs)
    log.info("cross-fit %s: %d fold models, median best epoch %d; fitting the daily model on all %s users for %d "
             "epochs", name, cf.best_epochs.size, int(np.median(cf.best_epochs)), f"{len(prep.frame):,}", epochs)
    everyone = prep.with_split(np.zeros(len(prep.frame), np.int8))
    net, conf, res = train_net(everyone, name, tc.model_copy(update={"epochs": epochs, "min_epochs": epochs}),
                               cfg.seed, lr_schedule=schedule)
    return net, conf, res, cf


def protocol_meta(cf: CrossFit | None) -> dict:
    """What a checkpoint and its report record of the protocol the model was fitted under."""
    if cf is None:
        return {"protocol": "holdout"}
    return {"protocol": "cross_fit", "folds": cf.folds, "fold_seeds": cf.fold_seeds, "model_seeds": cf.model_seeds,
            "cv_best_epochs": cf.best_epochs.tolist()}


def check_processes(processes: int) -> None:
    """StageError unless the launcher started ``train.processes`` processes (1: no launcher, or torchrun with 1)."""
    from models.distributed import launched_world

    world = launched_world()
    if world == processes:
        return
    if world == 1:
        raise StageError(f"train.processes is {processes}, but this process was not started by torchrun: run "
                         f"`fulcrum train` (it starts them) or `torchrun --standalone --nproc_per_node {processes} "
                         "-m fulcrum.cli train`")
    raise StageError(f"torchrun started {world} processes but train.processes is {processes}: set train.processes "
                     f"to {world} (it is recorded with the model), or start {processes}")


def run_train(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """The stage; with ``train.processes`` > 1 one rank of a torchrun group (``models.distributed``).

    Every rank trains on the same data: rank 0 reads it (it may rebuild the training set through
    Feast) and sends it to the others; only rank 0 writes the model and the reports. The other
    ranks return ``{"rank": r}``.
    """
    from models.distributed import from_main, process_group, rank_and_world

    t0 = time.perf_counter()
    tc = cfg.train
    check_processes(tc.processes)
    with process_group(tc.processes):
        prep = from_main(lambda: prepare(cfg.paths.rct_dir(root), tc.split, cfg.seed, tc.n_bins, target=tc.target,
                                         cfg=cfg, root=root))
        log.info("train: %d users (%d train / %d valid / %d test), %d fields, vocab %d",
                 len(prep.frame), *(int(prep.rows(p).sum()) for p in ("train", "valid", "test")),
                 prep.x.shape[1], prep.encoder.vocab_size)
        net, conf, res, cf = fit_for_protocol(cfg, prep, tc.model, tc, cfg.paths.model_dir(root))
        rank = rank_and_world()[0]
    return _write_model(cfg, root, prep, (net, conf, res, cf), t0) if rank == 0 else {"rank": rank}


def _write_model(cfg: FulcrumConfig, root: Path, prep: Prepared, fitted: tuple, t0: float) -> dict:
    """Save the checkpoint, the report and the history of ``fit_for_protocol``'s model; returns the report."""
    from models.checkpoint import save_checkpoint

    tc = cfg.train
    net, conf, res, cf = fitted
    meta = checkpoint_meta(prep, res, tc, cfg.seed, cf)
    version = save_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT, tc.model, conf, net, prep.encoder, meta)
    summary = train_summary(tc.model, version, prep, res, tc, net, t0, cf)
    reports = cfg.paths.reports_dir(root)
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    # A model fit on every user has no validation numbers: null, not NaN (strict JSON for DVC plots).
    history = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in res.history]
    (reports / "plots" / "train_history.json").write_text(json.dumps(history, indent=1, allow_nan=False) + "\n")
    if cf is None:
        log.info("train: %s version %s, best epoch %d by validation %s (loss %.5f, QINI %.4f), %.1f s",
                 tc.model, version, res.best_epoch, tc.select, meta["val_loss"], meta["val_qini"], res.seconds)
    else:
        log.info("train: %s version %s, cross-fitted (%d folds × %d repeats), then %d epochs on all users, %.1f s",
                 tc.model, version, cf.folds, len(cf.fold_seeds), len(res.history), summary["stage_seconds"])
    return summary


def validation_at_best(res, cf: CrossFit | None) -> tuple[float, float]:
    """(validation loss, QINI) at the chosen epoch; cross-fitted: the fold models' means (the daily model has none),
    over the fold models that have the figure (a fold ensemble's common validation users can miss an arm)."""
    if cf is not None:
        val = cf.val.reshape(-1, 2)
        return tuple(float(col[np.isfinite(col)].mean()) if np.isfinite(col).any() else float("nan") for col in val.T)
    return res.validation()


def checkpoint_meta(prep: Prepared, res, tc: TrainConfigModel, seed: int, cf: CrossFit | None = None) -> dict:
    """What a checkpoint records besides the weights: arms, responses, target scale, the chosen epoch, the protocol."""
    man = prep.manifest
    val_loss, val_qini = validation_at_best(res, cf)
    return {
        **protocol_meta(cf),
        "arms": man.arms,
        "responses": man.responses,
        "target": prep.target.state(),
        "seed": seed,
        "best_epoch": res.best_epoch,
        "select": tc.select,
        "val_qini": val_qini,
        "val_loss": val_loss,
        "data_last_snapshot": man.last_snapshot,
    }


def train_summary(name: str, version: str, prep: Prepared, res, tc: TrainConfigModel, net, t0: float,
                  cf: CrossFit | None = None) -> dict:
    """The training report (DVC metrics) of one fitted model (the daily one under cross-fitting)."""
    n_train = len(prep.frame) if cf is not None else int(prep.rows("train").sum())
    epochs_run = len(res.history)
    val_loss, val_qini = validation_at_best(res, cf)
    return {
        "model": name,
        "version": version,
        # Here, not in the checkpoint: the same data and seed give the same checkpoint bytes, on any worker.
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "best_epoch": res.best_epoch,
        "epochs_run": epochs_run,
        "select": tc.select,
        "val_qini": round(val_qini, 6),
        "val_loss": round(val_loss, 6),
        "train_seconds": round(res.seconds, 2),
        "train_samples_per_s": round(n_train * res.epochs_trained / max(res.seconds, 1e-9)),
        "networks": max(1, len(res.members)),
        "n_train": n_train,
        "device": str(next(net.parameters()).device),
        "processes": tc.processes,
        "stage_seconds": round(time.perf_counter() - t0, 2),
        **protocol_meta(cf),
    }
