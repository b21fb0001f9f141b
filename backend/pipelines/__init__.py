"""Generation pipelines, one module per method. :func:`load_builtin` imports them, which
registers each in :data:`backend.pipelines.base.REGISTRY` (kept lazy: they import torch,
gsplat and the geometry stack)."""
import importlib

from .base import REGISTRY, CancelToken, Emitter, InputSpec, JobCancelled, JobRequest, Param, ParamError, Pipeline, Result, register

BUILTIN = ("reconstruct", "dreamgaussian", "texture_refine")


def load_builtin() -> dict:
    """Import (and so register) the built-in pipelines; returns the registry."""
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
    return REGISTRY


__all__ = ["BUILTIN", "REGISTRY", "CancelToken", "Emitter", "InputSpec", "JobCancelled", "JobRequest", "Param", "ParamError",
           "Pipeline", "Result", "load_builtin", "register"]
