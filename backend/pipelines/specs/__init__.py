"""The built-in methods' specifications (:class:`~backend.pipelines.base.Pipeline` subclasses
without ``run``): importing this package registers them, and imports neither torch nor any
renderer, so the server process can validate submits and describe its pipelines."""
from . import dreamcraft3d, dreamgaussian, dreamtime, dtc123, im3d, reconstruct, texture_paint, texture_refine  # noqa: F401
