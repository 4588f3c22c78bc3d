"""Model variants spelled ``base+key=value``: parsed once, validated against the train section."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fulcrum.config import load_config
from models.variants import split_variant, with_overrides


def test_values_are_json_where_they_parse_and_strings_otherwise():
    assert split_variant("hum") == ("hum", {})
    assert split_variant("hum+offset_mean=1+pooling=sum+tower_hidden=[64]+detach_control=true") == (
        "hum", {"offset_mean": 1, "pooling": "sum", "tower_hidden": [64], "detach_control": True})
    with pytest.raises(ValueError, match="not key=value"):
        split_variant("hum+offset_mean")


def test_overrides_are_validated_as_a_whole():
    train = load_config(Path(__file__).resolve().parents[2] / "params.yaml").train
    assert with_overrides(train, {"offset_tower": "joint"}).offset_tower == "joint"
    assert with_overrides(train, {}) == train
    with pytest.raises(ValidationError, match="offset_meen"):
        with_overrides(train, {"offset_meen": 1})
    with pytest.raises(ValidationError, match="offset_mean"):
        with_overrides(train, {"offset_mean": 2})  # outside [0, 1]
