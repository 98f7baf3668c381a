"""The one path-safety rule for every name that becomes a file (stage names, asset names, job ids), and
where the models shipped inside the package live (``embedded:<name>``)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from dreamsmith.errors import ConfigError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def safe_name(name: str, what: str) -> str:
    """``name`` if it can be a file name inside a run directory (letters, digits, ``_ . -``, not starting
    with a dot or dash, at most 64 characters), else a ConfigError naming ``what``."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(f"{what} {name!r} cannot be used in file names: use letters, digits, '_', '-' and '.' "
                          "(at most 64, starting with a letter or digit)")
    return name


EMBEDDED_PREFIX = "embedded:"


def embedded_model_path(name: str) -> Path:
    """Folder of a model shipped inside the package (``dreamsmith/models/<name>``)."""
    return Path(str(resources.files("dreamsmith") / "models" / name))


def resolve_model(model: str) -> str:
    """``embedded:<name>`` -> the packaged folder; anything else unchanged."""
    if model.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_path(model.removeprefix(EMBEDDED_PREFIX)))
    return model
