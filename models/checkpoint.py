"""Checkpoints: weights plus everything needed to score (encoder, config, scales), versioned.

The file holds only tensors and plain containers, so it loads with
``torch.load(path, weights_only=True)``: no pickled code runs on load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from models.base import UpliftNet
from models.encoding import FieldEncoder
from models.registry import build_net

FORMAT = 1


@dataclass
class Loaded:
    net: UpliftNet
    encoder: FieldEncoder
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def target(self):
        from models.target import TargetTransform

        return TargetTransform.from_state(self.meta["target"])


def _version(name: str, config: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps([name, config], sort_keys=True).encode())
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in sorted(state.items())}, buf)
    h.update(buf.getvalue())
    return h.hexdigest()[:12]


def save_checkpoint(
    path: Path, name: str, config: dict, net: UpliftNet, encoder: FieldEncoder, meta: dict
) -> str:
    """Write the checkpoint atomically; returns the model version (content hash)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    version = _version(name, config, state)
    blob = {
        "format": FORMAT,
        "model": name,
        "config": config,
        "encoder": encoder.state(),
        "state_dict": state,
        "meta": {**meta, "version": version, "model": name},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return version


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Loaded:
    blob = torch.load(path, map_location=device, weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {blob.get('format')!r}")
    net = build_net(blob["model"], blob["config"])
    net.load_state_dict(blob["state_dict"])
    net.to(device).eval()
    return Loaded(net, FieldEncoder.from_state(blob["encoder"]), blob["meta"])

