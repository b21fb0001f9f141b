"""Generation pipelines, one module per method. Each method has a specification in
:mod:`backend.pipelines.specs` (parameters, presets, inputs, checks; no torch) and an
implementation module here (the ``run`` that imports torch, gsplat and the geometry stack).
:func:`load_builtin` imports the specifications only, which registers each in
:data:`backend.pipelines.base.REGISTRY`; the worker process imports an implementation when it
runs a job (:meth:`Pipeline.implementation_class`)."""
import importlib

from .base import REGISTRY, CancelToken, Emitter, InputSpec, JobCancelled, JobRequest, Param, ParamError, Pipeline, Result, register

BUILTIN = ("reconstruct", "dreamgaussian", "texture_refine")


def load_builtin() -> dict:
    """Import (and so register) the built-in pipelines' specifications; returns the registry."""
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.specs.{name}")
    return REGISTRY


__all__ = ["BUILTIN", "REGISTRY", "CancelToken", "Emitter", "InputSpec", "JobCancelled", "JobRequest", "Param", "ParamError",
           "Pipeline", "Result", "load_builtin", "register"]
