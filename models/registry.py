"""Neural uplift models by name, all built from the same dimensions and hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass

from fulcrum.config import HUM_MODELS, NEURAL_MODELS  # noqa: F401  (re-exported: the names live in one place)
from models.base import UpliftNet

# The spec's HUM (§1): field attention, sum pooling, a treated path that predicts the outcome.
PAPER_HUM = {"pooling": "sum", "attention": "field", "treated_head": "outcome", "balanced": False, "control": "mean",
             "treated_input": "treated", "detach_control": False, "control_grad": 1.0, "offset_mean": 0.0, "experts": "branch",
             "offset_init": "zero", "offset_tower": "response", "offset_wide": "none",
             "huber_delta": None, "positive_part": []}

# Options added after HP sets were first stored: what an HP set without them meant (the old behaviour).
LATER_OPTIONS = {"offset_wide": "none", "huber_delta": None, "positive_part": []}


@dataclass(frozen=True)
class Dims:
    n_fields: int
    vocab_size: int
    n_treatments: int
    n_responses: int
    field_sizes: tuple[int, ...] = ()  # ids per field in id order (FieldEncoder.sizes_); () = unknown


def net_config(name: str, dims: Dims, hp: dict) -> dict:
    """The constructor arguments of model ``name`` (JSON-able, stored in checkpoints)."""
    if name not in NEURAL_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(NEURAL_MODELS)}")
    single = _single_config(name, dims, hp)
    members = int(hp.get("ensemble", 1))  # HP sets from before the option: one network
    return single if members == 1 else {**single, "members": members}


def _single_config(name: str, dims: Dims, hp: dict) -> dict:
    base = {"n_fields": dims.n_fields, "vocab_size": dims.vocab_size, "n_treatments": dims.n_treatments,
            "n_responses": dims.n_responses, "emb_dim": hp["emb_dim"], "dropout": hp["dropout"]}
    if name in HUM_MODELS:
        # hum: the configured HUM variant (train.pooling / attention / treated_head);
        # hum_paper: the spec-faithful one whatever the configuration; hum_no_kl: hum without KL.
        arch = PAPER_HUM if name == "hum_paper" else {k: hp[k] if k in hp or k not in LATER_OPTIONS else LATER_OPTIONS[k]
                                                         for k in PAPER_HUM}
        if not all(isinstance(i, int) and 0 <= i < dims.n_responses for i in arch["positive_part"]):
            raise ValueError(f"positive_part takes response indices below {dims.n_responses}, got "
                             f"{arch['positive_part']!r} (the train stage maps train.positive_part's names)")
        return {
            **base,
            "n_experts": hp["n_experts"],
            "expert_hidden": list(hp["expert_hidden"]),
            "tower_hidden": list(hp["tower_hidden"]),
            "kl_weight": 0.0 if name == "hum_no_kl" else hp["kl_weight"],
            "field_sizes": [int(s) for s in dims.field_sizes],
            **arch,
        }
    if name == "cpm":  # CDUM's preference model (spec §3)
        return {**base, "n_experts": hp["n_experts"], "expert_hidden": list(hp["expert_hidden"]),
                "tower_hidden": list(hp["tower_hidden"])}
    return {
        **base,
        "hidden": list(hp["expert_hidden"]),
        "head_hidden": list(hp["tower_hidden"]),
        "n_experts": hp["n_experts"],
    }


def build_net(name: str, config: dict) -> UpliftNet:
    """Instantiate model ``name`` from the arguments ``net_config`` produced.

    ``members`` > 1 in the config: an ensemble of that many networks, drawn one after the other
    from the current random state (``models.ensemble``). ``arm_select``: each network (member)
    with one snapshot per treatment (``models.arm_select``; the weights come from the checkpoint)."""
    c = dict(config)
    members = int(c.pop("members", 1))
    per_arm = bool(c.pop("arm_select", False))

    def one() -> UpliftNet:
        if not per_arm:
            return _build_single(name, c)
        from models.arm_select import ArmSelected

        main = _build_single(name, c)
        return ArmSelected(main, [_build_single(name, c) for _ in range(main.n_treatments)])

    if members > 1:
        from models.ensemble import Ensemble

        return Ensemble([one() for _ in range(members)])
    return one()


def _build_single(name: str, config: dict) -> UpliftNet:
    if name in HUM_MODELS:
        from models.hum import HUM, HUMConfig

        c = dict(config)
        c["expert_hidden"], c["tower_hidden"] = tuple(c["expert_hidden"]), tuple(c["tower_hidden"])
        c["field_sizes"] = tuple(c.get("field_sizes", ()))  # checkpoints before the layout was recorded: ()
        return HUM(HUMConfig(**c))
    if name == "cpm":
        from models.cpm import CPM, CPMConfig

        c = dict(config)
        c["expert_hidden"], c["tower_hidden"] = tuple(c["expert_hidden"]), tuple(c["tower_hidden"])
        return CPM(CPMConfig(**c))
    from models import baselines as B

    c = dict(config)
    c["hidden"], c["head_hidden"] = tuple(c["hidden"]), tuple(c["head_hidden"])
    cls = {"s_learner": B.SLearner, "t_learner": B.TLearner, "tarnet": B.TARNet,
           "efin": B.EFIN, "m3tn": B.M3TN, "descn": B.DESCN}[name]
    return cls(B.NetConfig(**c))
