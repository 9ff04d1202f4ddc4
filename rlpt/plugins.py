"""Plug-ins named "my_pkg.my_mod:attr" (verifiers, environments): the import, with errors that say which part of
the spec failed. What the attribute must be is each kind's own check (rlpt.verifiers.plugin,
rlpt.environments)."""

from __future__ import annotations

import importlib
from typing import Any

from rlpt.errors import SetupError


def import_attr(spec: str, kind: str, example: str, error: type[SetupError]) -> Any:
    """The object `spec` names; `error` (e.g. "verifier plug-in 'x' ...") for a malformed spec, a module that does
    not import, or a missing attribute. "mod:Outer.inner" reaches nested attributes."""
    module_name, sep, attr_path = (part.strip() for part in spec.partition(":"))
    if not sep or not module_name or not attr_path:
        raise error(f"{kind} plug-in spec {spec!r} must look like {example!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise error(f"{kind} plug-in {spec!r}: cannot import module {module_name!r}: {e}") from e
    except Exception as e:  # a SyntaxError or a crash at import time inside the user's module
        raise error(f"{kind} plug-in {spec!r}: importing module {module_name!r} raised {type(e).__name__}: {e}") from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise error(f"{kind} plug-in {spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj
