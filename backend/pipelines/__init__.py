"""Generation pipelines, one module per method. Importing this package registers the
built-in pipelines in :data:`backend.pipelines.base.REGISTRY`."""
from .base import REGISTRY, CancelToken, Emitter, InputSpec, JobCancelled, JobRequest, Param, ParamError, Pipeline, Result, register

__all__ = ["REGISTRY", "CancelToken", "Emitter", "InputSpec", "JobCancelled", "JobRequest", "Param", "ParamError",
           "Pipeline", "Result", "register"]
