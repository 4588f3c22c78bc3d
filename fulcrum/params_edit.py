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


# What ``set_params`` returns for a key the file did not have, and takes as "remove this key": a
# restore must delete what an override added (a null instead fails validation, e.g. a σ that
# only had a default), and JSON (the DAG keeps the previous values in a file) has no "absent".
ABSENT: dict[str, bool] = {"__absent__": True}


def set_params(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted ``overrides`` to the YAML file at ``path``; returns the previous values.

    A key the file did not have comes back as ``ABSENT`` under the outermost missing part of its
    path (``{"decision.sigma.t3": ABSENT}``, or ``{"source.requests": ABSENT}`` when ``requests``
    was missing too), so ``set_params(path, previous)`` puts the file back as it was: an ``ABSENT``
    value removes its key. Raises ConfigError (and writes nothing) when the edited configuration
    is invalid.
    """
    y = _yaml()
    tree = y.load(path.read_text())
    previous: dict[str, Any] = {}
    for key, value in overrides.items():
        node = tree
        parts = key.split(".")
        if value == ABSENT:
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and parts[-1] in node:
                previous[key] = _plain(node.pop(parts[-1]))
            continue
        replaced = None  # the outermost part of the path that is missing or null: what a restore puts back
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                if replaced is None:
                    replaced = ".".join(parts[: i + 1])
                    previous.setdefault(replaced, ABSENT if part not in node else None)
                node[part] = {}
            node = node[part]
        if replaced is None:
            previous[key] = _plain(node[parts[-1]]) if parts[-1] in node else ABSENT
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
