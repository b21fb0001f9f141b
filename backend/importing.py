"""Importing a name given as ``"module:QualifiedName"`` (pipelines, teachers, plugins)."""
from __future__ import annotations

import importlib
from typing import Any


def load_reference(reference: str) -> Any:
    """Import ``"module:QualifiedName"`` and return that object.

    Raises:
        ImportError: the module or the name does not exist (the message names both).
    """
    module, _, qualname = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"{reference}: {module} has no {qualname}") from exc
    return obj
