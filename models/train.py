"""One trainer for every uplift network: whole-tensor mini-batches, early stopping and
best-epoch pick on a validation criterion, reduce-on-plateau learning rate.

The criterion is the held-out loss by default: over epochs and seeds it tracks the
true ranking quality (Spearman with true ρ +0.56) where validation QINI, near zero on
noisy heavy-tailed responses, does not (+0.18; ``benchmarks/selection_criteria.py``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.arm_select import arm_epoch, served_row_loss
from models.averaging import WeightAverage
from models.base import UpliftNet, relative_uplift
from models.distributed import data_parallel, from_main_floats, rank_and_world, share, sum_across

log = logging.getLogger("fulcrum")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Weight decay of the model's ``offset_parameters()`` (HUM's offset towers and wide table); None = weight_decay.
    offset_weight_decay: float | None = None
    # Step size of the model's ``wide_parameters()`` (HUM's additive offset table) in their own Adam group
    # with eps = 1: their gradients are ≪ 1, so the step is this × the moving average of the gradient
    # (SGD with momentum), which follows the ridge path; Adam's per-entry normalized step does not (an
    # entry with a faint noisy gradient moves as fast as one with a strong one). None: Adam like the rest.
    offset_wide_lr: float | None = None
    # "noise": response r's wide step ∝ 1 / var_r, the training targets' variance per response, the
    # factors averaging 1: early stopping from zero on that step is ridge with a penalty proportional to each
    # response's noise, where one step for all gives the noisier response the weaker penalty. "same": one step.
    offset_wide_step: str = "same"
    min_epochs: int = 1  # epochs before the best-epoch pick and early stopping apply
    early_stopping_patience: int = 4
    plateau_factor: float = 0.6
    plateau_patience: int = 2
    seed: int = 7
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    select: str = "loss"  # "loss": lowest validation loss; "qini": highest validation mean QINI
    log_every: int = 1
    # > 0: validate, select and return the exponential moving average of the weights over steps
    # (``models.averaging``) with this decay, not the weights of the last step.
    ema: float = 0.0
    # Learning rate per epoch, replayed instead of the plateau schedule: a model fitted on every
    # user (no validation rows) follows the schedule its cross-fitted fold models took.
    lr_schedule: tuple[float, ...] | None = None
    # Also keep, per treatment k, the weights of the epoch where arm k's validation rows alone have
    # the lowest loss of the served outcome (``TrainResult.arm_states``; ``models.arm_select`` reads each
    # effect from them) ...
    per_arm_select: bool = False
    # ... where that epoch beats the best epoch on those rows by a paired z ≥ this (None: always).
    per_arm_min_z: float | None = None


@dataclass
class TensorData:
    """Model inputs on one device: x (n, f) int64, arm (n,) int64, y (n, R) float32 (scaled)."""

    x: torch.Tensor
    arm: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device) -> TensorData:
        return TensorData(self.x.to(device), self.arm.to(device), self.y.to(device))

    def where(self, rows: torch.Tensor) -> TensorData:
        """The rows of a boolean mask (n,)."""
        return TensorData(self.x[rows], self.arm[rows], self.y[rows])


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # The returned model's validation figures ({"val_loss", "val_qini"}) where they are not the
    # history row of ``best_epoch``: an ensemble's (``ensemble_result``).
    at_best: dict | None = None
    members: list[TrainResult] = field(default_factory=list)  # an ensemble's: one per member
    # ``per_arm_select``: per treatment k, the epoch its effect is read from (``models.arm_select.arm_epoch``),
    # the paired z of that epoch's loss gain over the best epoch on arm k's rows, and its weights
    arm_epochs: list[int] = field(default_factory=list)
    arm_z: list[float] = field(default_factory=list)
    arm_states: list[dict] = field(default_factory=list, repr=False)

    @property
    def epochs_trained(self) -> int:
        """Epochs run over every network (an ensemble's members each count)."""
        return sum(len(m.history) for m in self.members) if self.members else len(self.history)

    def validation(self) -> tuple[float, float]:
        """(validation loss, validation QINI) of the returned model."""
        row = self.at_best if self.at_best is not None else self.history[self.best_epoch]
        return float(row["val_loss"]), float(row["val_qini"])


def ensemble_result(members: list[TrainResult], at_best: dict) -> TrainResult:
    """One TrainResult for networks fit one after the other: the median chosen epoch, the summed time,
    and per epoch the mean of every numeric figure over the members that ran it (plots and logs)."""
    longest = max(len(r.history) for r in members)
    history = []
    for epoch in range(longest):
        rows = [r.history[epoch] for r in members if epoch < len(r.history)]
        history.append({"epoch": epoch, **{k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "epoch"}})
    best = int(round(float(np.median([r.best_epoch for r in members]))))
    return TrainResult(best_epoch=best, best_score=float(np.mean([r.best_score for r in members])), history=history,
                       seconds=sum(r.seconds for r in members), at_best=at_best, members=list(members))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# Inference batch: HUM's fused forward is fastest when a batch's activations stay in cache
# (measured on 2 cores: 4,096 rows 7.2 s per 1M users, 16,384 rows 10.4 s, 65,536 rows 13.2 s).
PREDICT_BATCH = 4_096


@torch.no_grad()
def predict_mu(model: UpliftNet, x: torch.Tensor, target=None, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Expected outcomes (n, K+1, R) as numpy; in response units when ``target`` is given."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        mu = model.predict_mu(x[i : i + batch_size])
        out.append((target.decode(mu) if target is not None else mu).float().cpu())
    return torch.cat(out).numpy()


def predict_uplift(model: UpliftNet, x: torch.Tensor, target=None, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """δ (n, K, R) = ŷ_k / ŷ_0 − 1, with outcomes decoded to response units first."""
    mu = torch.from_numpy(predict_mu(model, x, target, batch_size))
    return relative_uplift(mu).numpy()


@torch.no_grad()
def validation_loss(model: UpliftNet, data: TensorData, batch_size: int = 16_384) -> float:
    """The model's prediction loss (``mse`` part: no regularizers) on held-out rows, row-weighted."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        _, parts = model.loss(data.x[sl], data.arm[sl], data.y[sl])
        total += parts["mse"] * min(batch_size, len(data) - i)
    model.train(was_training)
    return total / max(len(data), 1)


def batch_step(model: UpliftNet, train: TensorData, opt: torch.optim.Optimizer
               ) -> Callable[[torch.Tensor], dict[str, float]]:
    """One optimizer step per call on the batch of row indices given; returns the loss parts.

    In a torch.distributed group (``models.distributed``) each rank takes its share of the
    batch and DDP averages the gradients. Every model's loss is a mean over the batch's rows,
    so rank r's mean is weighted by world·n_r/n: the average over ranks is then the gradient of
    the whole batch's mean, the one a single process takes (equal up to the order of float
    sums; dropout draws other masks per rank). The parts come back weighted by n_r/n: summed
    over the ranks (``sum_across``) they are the batch's.
    """
    rank, world = rank_and_world()
    if world == 1:
        def one(idx: torch.Tensor) -> dict[str, float]:
            loss, parts = model.loss(train.x[idx], train.arm[idx], train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return parts

        return one
    ddp = data_parallel(model)

    def shared(idx: torch.Tensor) -> dict[str, float]:
        mine = share(idx, rank, world)
        frac = len(mine) / len(idx)
        if not len(mine):  # a last batch of fewer rows than ranks: one row at weight 0 keeps DDP in step
            mine = idx[:1]
        loss, parts = ddp(train.x[mine], train.arm[mine], train.y[mine])
        opt.zero_grad(set_to_none=True)
        (loss * (world * frac)).backward()
        opt.step()
        return {k: v * frac for k, v in parts.items()}

    return shared


def param_groups(model: UpliftNet, weight_decay: float, offset_weight_decay: float | None = None,
                 offset_wide_lr: float | None = None) -> list[dict]:
    """Adam's parameter groups: the model's offset parameters (``offset_parameters()``) at their own
    weight decay when one is given, its wide offset table (``wide_parameters()``) at its own step
    (``TrainConfig.offset_wide_lr``; eps 1, no decay) when one is given, every other parameter at
    ``weight_decay``. A model without such parameters (the baselines, HUM's outcome head) gets one
    group: like every HUM-only option, these do not apply to it."""
    def listed(method: str, wanted: bool) -> list[torch.nn.Parameter]:
        found = getattr(model, method, None)
        return list(found()) if found is not None and wanted else []

    wide = listed("wide_parameters", offset_wide_lr is not None)
    wide_ids = {id(p) for p in wide}
    own = [p for p in listed("offset_parameters", offset_weight_decay is not None) if id(p) not in wide_ids]
    taken = wide_ids | {id(p) for p in own}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken], "weight_decay": weight_decay}]
    if own:
        groups.append({"params": own, "weight_decay": offset_weight_decay})
    if wide:
        groups.append({"params": wide, "weight_decay": 0.0, "lr": offset_wide_lr, "eps": 1.0})
    return groups


def noise_step_scale(y: torch.Tensor) -> torch.Tensor:
    """Per-response factors (R,) on the wide table's step, proportional to 1 / var_r of the targets y (n, R)
    and averaging 1 (the configured step is the mean step; a single response keeps it)."""
    inv = 1.0 / y.double().var(0, unbiased=False).clamp_min(1e-12)  # (R,)
    return (inv / inv.mean()).float()


def scale_wide_steps(model: UpliftNet, scale: torch.Tensor) -> list:
    """Multiply the gradient of the model's ``wide_parameters()`` (each (vocab, R)) by ``scale`` (R,) per
    response column: with their Adam group's eps 1 the step is proportional to the gradient, so this
    scales each response's step. Returns the hook handles (``remove()`` them after training)."""
    found = getattr(model, "wide_parameters", None)
    params = list(found()) if found is not None else []

    def hook_for(p: torch.nn.Parameter):
        s = scale.to(p.device, p.dtype)  # (R,): broadcast over the table's rows
        return p.register_hook(lambda g: g * s)

    return [hook_for(p) for p in params]


def fit(
    model: UpliftNet,
    train: TensorData,
    valid: TensorData,
    cfg: TrainConfig,
    score_fn: Callable[[np.ndarray], float],
    progress: Callable[[int], None] | None = None,
    target=None,
) -> TrainResult:
    """Train in place; the model ends with the weights of the best validation epoch.

    ``score_fn`` maps validation δ (n, K, R) to the mean QINI (recorded every epoch, and
    the criterion when ``cfg.select == "qini"``); with ``"loss"`` the best epoch has the
    lowest validation loss. ``target`` (a ``TargetTransform``) decodes outputs before δ.
    With no validation rows there is nothing to select on: all ``cfg.epochs`` run (with
    ``cfg.lr_schedule`` when given) and the model keeps the last epoch's weights.
    In a torch.distributed group every rank calls this on the same data: the batches are
    shared out (``batch_step``), the validation figures are rank 0's, so every rank stops at
    the same epoch with the same weights.
    """
    if cfg.select not in ("loss", "qini"):
        raise ValueError(f"select must be 'loss' or 'qini', got {cfg.select!r}")
    blind = len(valid) == 0
    if cfg.lr_schedule is not None and len(cfg.lr_schedule) < cfg.epochs:
        raise ValueError(f"lr_schedule has {len(cfg.lr_schedule)} epochs, training runs {cfg.epochs}")
    seed_everything(cfg.seed)
    device = next(model.parameters()).device
    train, valid = train.to(device), valid.to(device)
    opt = torch.optim.Adam(param_groups(model, cfg.weight_decay, cfg.offset_weight_decay, cfg.offset_wide_lr), lr=cfg.lr)
    if cfg.offset_wide_step not in ("same", "noise"):
        raise ValueError(f"offset_wide_step must be 'same' or 'noise', got {cfg.offset_wide_step!r}")
    hooks = (scale_wide_steps(model, noise_step_scale(train.y))
             if cfg.offset_wide_step == "noise" and cfg.offset_wide_lr is not None else [])
    try:
        return _fit_loop(model, train, valid, cfg, score_fn, progress, target, opt, blind)
    finally:
        for h in hooks:
            h.remove()


def _fit_loop(model: UpliftNet, train: TensorData, valid: TensorData, cfg: TrainConfig,
              score_fn: Callable[[np.ndarray], float], progress: Callable[[int], None] | None, target,
              opt: torch.optim.Optimizer, blind: bool) -> TrainResult:
    """``fit``'s epochs, selection and early stopping with the optimizer set up (``train`` on the model's device)."""
    device = train.x.device
    step = batch_step(model, train, opt)
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    averaged = average.applied if average is not None else contextlib.nullcontext  # what is validated and kept

    def kept() -> dict:
        with averaged():
            return copy.deepcopy(model.state_dict())

    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    best = TrainResult(best_epoch=-1, best_score=-np.inf)
    # per_arm_select: each treatment's validation rows, their losses per epoch (CPU), and the weights of
    # the epoch of each arm's lowest loss so far
    arms = ([valid.where(valid.arm == k) for k in range(1, model.n_treatments + 1)]
            if cfg.per_arm_select and not blind else [])
    arm_rows: list[list[torch.Tensor]] = [[] for _ in arms]  # [k][epoch]: (n_k,)
    positive = tuple(getattr(getattr(model, "cfg", None), "positive_part", ()))  # judged as trained (HUM's option)
    arm_best: list[tuple[float, dict | None]] = [(np.inf, None)] * len(arms)
    t0 = time.perf_counter()
    n = len(train)
    for epoch in range(cfg.epochs):
        if cfg.lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = float(cfg.lr_schedule[epoch])
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)  # the same order on every rank: same seed
        sums: dict[str, float] = {}
        steps = 0
        for i in range(0, n, cfg.batch_size):
            parts = step(perm[i : i + cfg.batch_size])
            if average is not None:
                average.update()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        sums = sum_across(sums)  # the ranks' row-weighted shares add up to each batch's figures
        if blind:
            qini = val_loss = score = float("nan")
        else:
            with averaged():
                qini = float(score_fn(predict_uplift(model, valid.x, target)))
                val_loss = validation_loss(model, valid)
            qini, val_loss = from_main_floats([qini, val_loss])
            score = -val_loss if cfg.select == "loss" else qini
        if cfg.lr_schedule is None and not blind:
            sched.step(score)
        row = {"epoch": epoch, "val_qini": qini, "val_loss": val_loss, "lr": opt.param_groups[0]["lr"]}
        if arms:  # every epoch is eligible: an untrained arm's loss is never its lowest
            with averaged():
                for k, part in enumerate(arms, start=1):
                    arm_rows[k - 1].append(served_row_loss(torch.from_numpy(predict_mu(model, part.x)), k, part.y.cpu(),
                                                           positive))
            arm_losses = from_main_floats([float(rows[-1].mean()) for rows in arm_rows])
            for k, loss_k in enumerate(arm_losses):
                row[f"val_loss_arm{k + 1}"] = loss_k
                if loss_k < arm_best[k][0]:
                    arm_best[k] = (loss_k, kept())
        row.update({k: v / max(steps, 1) for k, v in sums.items()})
        best.history.append(row)
        if progress:
            progress(1)
        if epoch % cfg.log_every == 0:
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if epoch + 1 < cfg.min_epochs or blind:
            continue  # warm-up: a noisy early peak must not freeze an untrained model
        if score > best.best_score:
            best.best_score, best.best_epoch = score, epoch
            best_state = kept()
        elif epoch - best.best_epoch >= cfg.early_stopping_patience:
            break
    if best.best_epoch < 0:  # fewer epochs than min_epochs: keep the last one
        best.best_epoch, best.best_score = len(best.history) - 1, score
        best_state = kept()
    model.load_state_dict(best_state)
    if arms:  # rank 0's picks are every rank's
        picks = [arm_epoch(rows, best.best_epoch, cfg.per_arm_min_z) for rows in arm_rows]
        flat = from_main_floats([float(v) for pick in picks for v in pick])
        best.arm_epochs, best.arm_z = [int(e) for e in flat[::2]], list(flat[1::2])
        best.arm_states = [state if e != best.best_epoch else best_state
                           for e, (_, state) in zip(best.arm_epochs, arm_best, strict=True)]
    best.seconds = time.perf_counter() - t0
    return best
