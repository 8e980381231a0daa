"""The JSON Schemas shipped with orchd: the one source of truth for the config file, the
registration body and the OpenAPI document."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ("SCHEMA_NAMES", "load_schema")

SCHEMA_NAMES = ("config", "endpoint", "circuit-breaker", "registration")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``<name>.schema.json`` from this package."""
    if name not in SCHEMA_NAMES:
        raise KeyError(name)
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data
