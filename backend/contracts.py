"""The contract between the parts, the stages and the methods: what a running job is given and
reports through, and the errors it raises. No torch, no other backend module: every layer of the
backend (parts, stages, methods, service) imports it, so none of them imports a layer above it for
these names (``docs/architecture.md``, the import-linter contracts in ``pyproject.toml``).

- :class:`CancelToken`, :class:`JobCancelled`: cancellation;
- :class:`Emitter`: progress, previews and log lines;
- :class:`JobRequest`, :class:`Result`: what ``Pipeline.run`` takes and returns;
- :class:`ParamError`: a request that does not fit (server code ``bad_params``);
- :data:`TIMESTEP_SCHEDULES`, :func:`schedule_kwargs`, :func:`parse_sizes`: parameters that
  stages and methods read alike.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class JobCancelled(Exception):
    """Raised by :meth:`CancelToken.check` when the job was cancelled."""


class ParamError(ValueError):
    """A submit's parameters or inputs do not fit the pipeline (server code ``bad_params``)."""


class CancelToken:
    """Cancellation flag shared by whoever cancels and a running pipeline.

    Args:
        event: the flag; a ``threading.Event`` by default, or a ``multiprocessing.Event`` so
            that a server process can cancel a job running in its worker process.
    """

    def __init__(self, event: Any = None) -> None:
        self._event = event if event is not None else threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled. Call once per step."""
        if self._event.is_set():
            raise JobCancelled()


@dataclass
class JobRequest:
    """Everything a pipeline run needs.

    Attributes:
        job_id: the server's job id.
        pipeline: the pipeline name.
        preset: the preset used.
        params: all parameters, resolved (defaults < preset < submit) and validated.
        inputs: input arrays as submitted (read-only numpy arrays).
        seed: the random seed (0 .. 2**31-1).
        job_dir: the job's folder; results are written here.
        device: the torch device string (``"cuda"`` or ``"cpu"``).
        models: the server's model cache (``backend.models.ModelCache``) or None.
        models_dir: an extra folder of model weights (``--models-dir``) or None.
    """

    job_id: str
    pipeline: str
    preset: str
    params: dict[str, Any]
    inputs: dict[str, np.ndarray]
    seed: int
    job_dir: Path
    device: str = "cpu"
    models: Any = None
    models_dir: str | None = None


@dataclass
class Result:
    """What a pipeline returns.

    Attributes:
        files: result files written into the job folder, by name (e.g. ``{"asset.glb": path}``).
        arrays: result arrays sent to the client (e.g. vertices float32 [V, 3]).
        meta: JSON-compatible facts about the result (e.g. face count, timings).
    """

    files: dict[str, Path] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Emitter:
    """Where a pipeline reports to. The server's subclass streams to clients; the default
    implementation only keeps the latest state (useful for direct calls and tests).

    ``progress`` computes elapsed time and the ETA of the current stage from its step rate.
    """

    def __init__(self) -> None:
        self._stage: str | None = None
        self._stage_start = time.monotonic()
        self._job_start = time.monotonic()
        self.last_progress: dict | None = None
        self.previews: dict[str, dict] = {}
        self.lines: list[str] = []

    def progress(self, stage: str, step: int, total: int, loss: float | None = None, message: str | None = None) -> dict:
        """Report ``step`` of ``total`` in ``stage``; ``loss`` is the current loss value.

        Returns the progress message (``stage, step, total, loss, eta_s, elapsed_s, message``).
        """
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_start = stage, now
        spent = now - self._stage_start
        eta = spent / step * (total - step) if step > 0 and total >= step else None
        msg = {
            "stage": stage,
            "step": int(step),
            "total": int(total),
            "loss": float(loss) if loss is not None and math.isfinite(float(loss)) else None,
            "eta_s": eta,
            "elapsed_s": now - self._job_start,
            "message": message,
        }
        self.last_progress = msg
        self._on_progress(msg)
        return msg

    def preview(self, kind: str, data: dict[str, Any], meta: dict | None = None) -> None:
        """Stream an intermediate result. ``kind``: ``"gaussians"`` (means float32 [N, 3],
        rgb uint8 [N, 3], opacity float32 [N]), ``"mesh"`` (vertices float32 [V, 3], faces
        int32 [F, 3], optional uv float32 [F*3, 2]), ``"texture"`` (rgba uint8 [H, W, 4]) or
        ``"views"`` (a method's generated views as one contact sheet, rgba uint8 [H, W, 4]).
        Tensors are copied to host numpy arrays, so the caller may keep changing them."""
        arrays = {k: _to_numpy(v) for k, v in data.items()}
        msg = {"kind": kind, "data": arrays, "meta": meta or {}}
        self.previews[kind] = msg
        self._on_preview(msg)

    def log(self, line: str) -> None:
        """Append a line to the job's log."""
        self.lines.append(line)
        self._on_log(line)

    # Subclass hooks.
    def _on_progress(self, msg: dict) -> None:
        pass

    def _on_preview(self, msg: dict) -> None:
        pass

    def _on_log(self, line: str) -> None:
        pass


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


#: The ``timestep_schedule`` choices of every stage that distils from a teacher, each with one
#: line for people (built by ``backend.schedules.make_schedule``; listed here so that
#: specifications stay torch-free).
TIMESTEP_SCHEDULES: dict[str, str] = {
    "dreamgaussian": "DreamGaussian: t falls linearly from t_max to t_min over training (deterministic)",
    "uniform": "DreamFusion: t drawn uniformly from [t_min, t_max] at every step",
    "dreamtime": "DreamTime TP-SDS: t falls monotonically, lingering where the prior weight is high (m1, m2, s1, s2)",
    "dtc": "DTC123 curriculum: a random t in a window moving from coarse (large t) to fine (small t)",
}


def schedule_kwargs(params: dict) -> dict:
    """The :func:`backend.schedules.make_schedule` keyword arguments of :func:`schedule_params`'
    values (DreamTime's prior)."""
    return {k: params[k] for k in ("m1", "m2", "s1", "s2") if k in params}


#: Bounds of the prior oracle's ``oracle_modes`` (K) and ``oracle_sigma`` (x0's [-1, 1] units),
#: read by ``guidance.oracle`` and by the methods' parameter tables.
ORACLE_MAX_MODES = 8
ORACLE_MAX_SIGMA = 2.0


#: The largest render side any method accepts in a list of sizes (the public DreamGaussian
#: code renders at most 512).
MAX_RENDER_SIZE = 2048


def parse_sizes(params: dict, name: str = "resolutions", count: int = 3, low: int = 16,
                high: int = MAX_RENDER_SIZE) -> list[int]:
    """The ``count`` comma-separated render sides (pixels) of the string parameter ``name``, each
    in [low, high]: the one validator of every method's resolution list.

    Raises:
        ParamError: not ``count`` whole numbers in range (the message names the parameter, the
            range and an example).
    """
    text = str(params[name])
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != count or min(sizes) < low or max(sizes) > high:
        raise ParamError(f"'{name}' must be {count} sizes from {low} to {high} pixels separated by commas, e.g. "
                         f"{','.join(str(128 * 2 ** i) for i in range(count))}; got {text!r}")
    return sizes


