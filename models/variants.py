"""Model variants named on a command line: ``base+key=value+key=value``.

``hum+offset_mean=1`` is the registry's ``hum`` trained with ``train.offset_mean = 1``;
values are read as JSON where they parse (``1``, ``true``, ``[64]``) and as strings
otherwise (``pooling=sum``). Used by the benchmarks and the social-pressure comparison,
so a variant is spelled the same way everywhere and its overrides are validated against
the ``train`` section as a whole (an unknown key is refused, never dropped).
"""

from __future__ import annotations

import json

from fulcrum.config import TrainConfigModel


def split_variant(name: str) -> tuple[str, dict]:
    """``"hum+lr=0.002+tower_hidden=[64]"`` -> ``("hum", {"lr": 0.002, "tower_hidden": [64]})``."""
    base, *items = name.split("+")
    over: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ValueError(f"variant {name!r}: {item!r} is not key=value")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return base, over


def with_overrides(train: TrainConfigModel, over: dict) -> TrainConfigModel:
    """``train`` with ``over`` applied, validated as a whole (the model forbids unknown keys;
    bad values raise pydantic's ValidationError naming the field)."""
    return type(train).model_validate({**train.model_dump(), **over})
