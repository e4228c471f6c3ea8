"""``numbers-etl config show``: the effective configuration as TOML, secrets hidden, each
value followed by where it came from (default, file, environment variable or flag)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from etl.config import ENV_PREFIX, Settings


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_settings(settings: Settings) -> str:
    numeric = {"max_removal_fraction"}  # kept as a decimal string by Settings.redacted()
    values = settings.redacted()
    width = max(len(k) for k in values)
    lines = [
        "# the effective configuration (precedence: flag > environment > file > default);",
        f"# every key also has an environment form {ENV_PREFIX}<KEY>",
    ]
    for key, value in values.items():
        source = settings.sources.get(key, "default")
        if value is None:
            lines.append(f"# {key} is not set ({source})")
            continue
        text = str(value) if key in numeric else toml_value(value)
        lines.append(f"{key.ljust(width)} = {text}  # {source}")
    return "\n".join(lines)
