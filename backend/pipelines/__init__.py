"""Generation pipelines, one module per method. Importing this package registers the
built-in pipelines in :data:`backend.pipelines.base.REGISTRY`."""
from .base import REGISTRY, CancelToken, Emitter, InputSpec, JobCancelled, JobRequest, Param, ParamError, Pipeline, Result, register

__all__ = ["REGISTRY", "CancelToken", "Emitter", "InputSpec", "JobCancelled", "JobRequest", "Param", "ParamError",
           "Pipeline", "Result", "register"]

# Built-in pipelines register themselves on import.
from . import reconstruct  # noqa: E402,F401
