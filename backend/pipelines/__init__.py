"""Generation pipelines, one module per method. Each method has a specification in
:mod:`backend.pipelines.specs` (parameters, presets, inputs, checks; no torch) and an
implementation module here (the ``run`` that imports torch, gsplat and the geometry stack).
:func:`load_builtin` imports the specifications only, which registers each in
:data:`backend.pipelines.base.REGISTRY`; the worker process imports an implementation when it
runs a job (:meth:`Pipeline.implementation_class`)."""
import importlib

from ..contracts import CancelToken, Emitter, JobCancelled, JobRequest, ParamError, Result
from .base import REGISTRY, InputSpec, Param, Pipeline, register

BUILTIN = ("reconstruct", "dreamgaussian", "dreamtime", "texture_refine", "texture_paint", "im3d", "dtc123", "dreamcraft3d")


def load_builtin() -> dict:
    """Import (and so register) the built-in pipelines' specifications; returns the registry."""
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.specs.{name}")
    return REGISTRY


def load_plugins(modules: list[str]) -> dict:
    """Import modules that add pipelines (``serve --plugin MODULE``): each registers its
    pipelines with :func:`register`, or lists them in a ``PIPELINES`` dict (name -> class).
    Returns the registry.

    Raises:
        ImportError: a module cannot be imported (the message names it).
        ValueError: a name is taken by another pipeline.
    """
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"cannot import the plugin module {name!r}: {exc}") from exc
        for cls in getattr(module, "PIPELINES", {}).values():
            register(cls)
    return REGISTRY


__all__ = ["BUILTIN", "REGISTRY", "CancelToken", "Emitter", "InputSpec", "JobCancelled", "JobRequest", "Param", "ParamError",
           "Pipeline", "Result", "load_builtin", "load_plugins", "register"]
