"""Choosing the torch device and describing it, and device-memory housekeeping."""
from __future__ import annotations

import gc

import torch


class DeviceError(RuntimeError):
    """The requested device is not usable here."""


def resolve_device(name: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is usable, else ``"cpu"``.

    Raises:
        DeviceError: ``"cuda"`` requested but no CUDA device is usable; or an unknown name.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        return "cuda"
    if name == "cpu":
        return "cpu"
    raise DeviceError(f"unknown device {name!r}; use auto, cuda or cpu")


def describe_device(device: str) -> str:
    """A one-line description, e.g. ``"cuda: NVIDIA H100 80GB HBM3 (79.1 GiB)"`` or ``"cpu (2 threads)"``."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"


def cuda_module_available(device, module: str) -> bool:
    """Whether ``device`` is a CUDA device and ``module`` (a CUDA-only library such as gsplat or
    nvdiffrast.torch) can be imported."""
    if torch.device(device).type != "cuda":
        return False
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device or host out-of-memory error."""
    text = str(exc).lower()
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def free_device_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
