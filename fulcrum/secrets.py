"""Secrets live in the environment (or a git-ignored file), never in ``params.yaml``.

``params.yaml`` is tracked, DVC copies the parameters each stage uses into ``dvc.lock``,
``fulcrum config`` prints them, and the generated ``feature_store.yaml`` is bundled into the
Bento. So a password there would spread to all of those. Instead:

- ``FULCRUM_REDIS_PASSWORD``: the production online store's Redis password. The generated
  ``feature_store.yaml`` says ``password=${FULCRUM_REDIS_PASSWORD}``; Feast (and Fulcrum's own
  direct readers and writers) expand it from the environment when they connect.
- ``FULCRUM_REGISTRY_URL``: a SQL registry URL with credentials (replaces ``feast.production.registry_url``).
- ``FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN``: Airflow's metadata database URL with credentials
  (replaces ``airflow.production.sql_alchemy_conn``).

Each may also be set in ``.fulcrum.secrets`` in the project root (``NAME=value`` lines,
git-ignored; read only when the variable is not already in the environment; refused unless
only its owner can read it). :func:`redact` hides credentials wherever text is printed.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

REDIS_PASSWORD_ENV = "FULCRUM_REDIS_PASSWORD"
REGISTRY_URL_ENV = "FULCRUM_REGISTRY_URL"
AIRFLOW_DB_ENV = "FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN"
SECRET_NAMES = (REDIS_PASSWORD_ENV, REGISTRY_URL_ENV, AIRFLOW_DB_ENV)
SECRETS_FILE = ".fulcrum.secrets"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?P<tail>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^,\s'\"]+)", re.IGNORECASE)


class SecretsError(ValueError):
    """A secrets file that is unsafe or malformed."""


def redact(text: str) -> str:
    """``text`` with URL passwords (``scheme://user:***@``) and ``password=***`` hidden.

    Placeholders (``${FULCRUM_REDIS_PASSWORD}``) stay visible: they are not secrets.
    """
    def hide(m: re.Match) -> str:
        secret = m.group("secret")
        kept = secret if secret.startswith("${") or secret.startswith("$") else "***"
        return m.group("head") + kept + (m.groupdict().get("tail") or "")

    return _KV_PASSWORD.sub(hide, _URL_PASSWORD.sub(hide, text))


def inline_secret(value: str | None) -> bool:
    """Does ``value`` carry a literal credential (not a ``$VAR`` placeholder)?"""
    return bool(value) and redact(value) != value


def load_secrets_file(root: Path) -> list[str]:
    """Set variables from ``<root>/.fulcrum.secrets`` that the environment lacks; the names set.

    The file must be readable by its owner only (mode 0600 or stricter): SecretsError otherwise.
    """
    path = Path(root) / SECRETS_FILE
    if not path.exists():
        return []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretsError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
    done = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in SECRET_NAMES:
            raise SecretsError(f"{path}:{n}: expected NAME=value with NAME one of {', '.join(SECRET_NAMES)}")
        if name not in os.environ:
            os.environ[name] = value.strip()
            done.append(name)
    return done


def env_secret(name: str) -> str | None:
    """The secret ``name`` from the environment (after :func:`load_secrets_file`), or None."""
    value = os.environ.get(name)
    return value or None
