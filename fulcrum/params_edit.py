"""Edit ``params.yaml`` in place, keeping its comments and layout (ruamel round-trip).

Used by the Airflow DAG to apply a run's trigger parameters the way DVC expects a
parameter change: in ``params.yaml``, so ``dvc.lock`` records what each stage really
used. The result is validated before anything is written.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fulcrum.config import ConfigError, FulcrumConfig, format_errors


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    # Keep `null` spelled out (ruamel's default writes nothing, which reads badly).
    y.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def set_params(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted ``overrides`` to the YAML file at ``path``; returns the previous values.

    Raises ConfigError (and writes nothing) when the edited configuration is invalid.
    """
    y = _yaml()
    tree = y.load(path.read_text())
    previous: dict[str, Any] = {}
    for key, value in overrides.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        previous[key] = _plain(node.get(parts[-1]))
        node[parts[-1]] = value
    buf = io.StringIO()
    y.dump(tree, buf)
    text = buf.getvalue()
    import yaml

    try:
        FulcrumConfig.model_validate(yaml.safe_load(text))
    except ValidationError as e:  # the documented "path: reason" lines, nothing written
        raise ConfigError(format_errors(e, f"{path} with {overrides}") + "\n(nothing was changed)") from None
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return previous


def _plain(value: Any) -> Any:
    """ruamel's commented containers -> plain dicts/lists (JSON-able)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
