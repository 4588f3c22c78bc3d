"""DDP (torchrun, gloo, CPU) trains what one process trains, within a stated tolerance.

Each rank takes a disjoint half of every batch and DDP averages the row-weighted gradients,
so two processes take the optimizer steps of one up to the order of float sums. Measured on
these sets (one process vs ``torchrun --standalone --nproc_per_node 2``, 2026-11-26): the
validation loss per epoch at most 1.2e-7 relative apart, the training loss 4.3e-8, the
predictions 4.8e-7 absolute (μ ≈ 1), the weights 1.0e-6; the stage run's validation loss
equal to 6 digits, its weights 2.1e-7 apart. The tolerances are ~10-100× those: room for
another summation order, none for another step. The batch of 255 rows splits 128 / 127, so
the row weighting counts: without it (each rank's plain mean averaged) the validation loss
moved 1.1e-3, the weights 0.26, and training stopped an epoch earlier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fulcrum.config import ConfigError, FulcrumConfig, load_config
from fulcrum.errors import StageError
from pipelines.train import check_processes

ROOT = Path(__file__).resolve().parents[2]
RUN = Path(__file__).with_name("ddp_fit_run.py")
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
REL_LOSS = 1e-5  # validation / training loss, relative (measured ≤ 1.2e-7; unweighted shares: 1.1e-3)
ABS_MU = 2e-5  # predicted outcomes, absolute (measured 4.8e-7)
ABS_WEIGHT = 1e-4  # any weight, absolute (measured ≤ 1.0e-6)


def _env(**extra: str) -> dict[str, str]:
    """One thread per process, as each of two ranks gets on 2 cores: the runs are then alike and not oversubscribed."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _fit(tmp: Path, name: str, launcher: list[str], processes: int) -> tuple[dict, np.lib.npyio.NpzFile]:
    out = tmp / f"{name}.npz"
    _run([*launcher, str(RUN), str(out), "--processes", str(processes)])
    return json.loads(out.with_suffix(".json").read_text()), np.load(out)


@pytest.mark.slow  # three torch processes start (~30 s on 2 busy cores)
def test_fit_under_torchrun_takes_the_steps_of_one_process(tmp_path):
    one, one_w = _fit(tmp_path, "one", [sys.executable], 1)
    two, two_w = _fit(tmp_path, "two", TORCHRUN, 2)
    # Each rank trained on its half of every batch: 4,000 rows = 15 batches of 255 (128 + 127) and one of 175 (88 + 87).
    epochs = len(one["history"])
    assert one["rows_seen"] == [4000 * epochs] and two["rows_seen"] == [2008 * epochs, 1992 * epochs]
    assert two["threads"] == 1  # 2 cores // 2 ranks (models.distributed.threads_per_process)
    # The same early stop, the same chosen epoch, the same learning-rate schedule.
    assert len(two["history"]) == epochs < 20 and two["best_epoch"] == one["best_epoch"]
    assert [h["lr"] for h in two["history"]] == [h["lr"] for h in one["history"]]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=REL_LOSS)
        assert b["mse"] == pytest.approx(a["mse"], rel=REL_LOSS)  # the ranks' shares add up to the batch's loss
    np.testing.assert_allclose(two_w["mu"], one_w["mu"], rtol=0, atol=ABS_MU)
    assert np.corrcoef(one_w["mu"].ravel(), two_w["mu"].ravel())[0, 1] > 0.999999
    for key in (k for k in one_w.files if k.startswith("w:")):
        np.testing.assert_allclose(two_w[key], one_w[key], rtol=0, atol=ABS_WEIGHT, err_msg=key)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny simulated project with its training set built: params.yaml and the root."""
    from pipelines.collect import run_collect
    from pipelines.training_set import run_training_set

    tmp = tmp_path_factory.mktemp("ddp_stage")
    params = tmp / "params.yaml"
    params.write_text(
        "paths: {data: data, reports: reports}\n"
        "source: {n_users: 3000, feature_days: 1, experiment_days: 1}\n"
        "train: {epochs: 4, min_epochs: 2, early_stopping_patience: 1, batch_size: 512, emb_dim: 8,\n"
        "        expert_hidden: [16, 8], tower_hidden: [8], ensemble: 2}\n"
        "evaluate: {protocol: holdout}\n")
    cfg = load_config(params)
    run_collect(cfg, tmp)
    run_training_set(cfg, tmp)
    return params, tmp


def _train(params: Path, root: Path, *overrides: str) -> tuple[str, dict, dict]:
    """`fulcrum train` as a user runs it: its output, train.json and the checkpoint's weights."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    res = _run([sys.executable, "-m", "fulcrum.cli", "train", "-p", str(params), "--root", str(root), *sets], root)
    report = json.loads((root / "reports" / "train.json").read_text())
    state = torch.load(root / "data" / "model" / "model.pt", weights_only=True)["state_dict"]
    return res.stdout, report, state


@pytest.mark.slow  # three torch processes start (~30 s on 2 busy cores)
def test_the_train_stage_with_two_processes_matches_one(project):
    params, root = project
    out1, one, w1 = _train(params, root)
    out2, two, w2 = _train(params, root, "train.processes=2")  # the CLI restarts itself under torchrun
    assert out1.count("trained hum") == out2.count("trained hum") == 1  # only rank 0 reports
    assert (one["processes"], two["processes"]) == (1, 2) and one["networks"] == two["networks"] == 2
    assert two["epochs_run"] == one["epochs_run"] and two["best_epoch"] == one["best_epoch"]
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=REL_LOSS)
    assert w1.keys() == w2.keys()
    for key in w1:  # both ensemble members, each fit under DDP
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=ABS_WEIGHT)


def test_a_group_of_another_size_than_train_processes_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StageError, match="torchrun started 2 processes but train.processes is 1"):
        check_processes(1)
    check_processes(2)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(StageError, match="not started by torchrun.*--nproc_per_node 3"):
        check_processes(3)
    check_processes(1)


@pytest.mark.parametrize(("train", "message"), [
    ({"processes": 0}, "greater than or equal to 1"),
    ({"processes": 2, "device": "cuda"}, "trains on CPU"),
    ({"processes": 4, "batch_size": 2}, "exceeds train.batch_size"),
])
def test_a_process_count_that_cannot_work_is_refused(train, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        FulcrumConfig.model_validate({"train": train})
