"""Third-party libraries made ready inside jobs: a torchvision that cannot load is marked absent,
and diffusers' and transformers' progress bars and warnings are silenced."""
from __future__ import annotations

import importlib.util
import sys

#: Why torchvision was marked absent in this process (None: it was not).
TORCHVISION_PROBLEM: str | None = None


def hide_broken_torchvision() -> str | None:
    """Mark an installed torchvision that fails to import as absent (``sys.modules["torchvision"]
    = None``, Python's own "not importable" mark), and return why; None when torchvision imports
    or is not installed.

    PyPI's Linux torchvision wheels are CUDA builds: beside a CPU-only torch (PyTorch's CPU
    index, or this project's CPU install) their extension needs ``libtorch_cuda.so``, and
    ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist``.
    transformers treats an installed torchvision as usable, so its image processors (CLIP's,
    DPT's) would fail to import too; with the mark, ``importlib.util.find_spec`` answers None and
    transformers carries on without it. The lpips backbone then comes from
    ``backend.perceptual.torchvision_layout_models``. Idempotent; costs one import of torchvision.
    """
    global TORCHVISION_PROBLEM
    if "torchvision" in sys.modules:
        return TORCHVISION_PROBLEM
    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except ValueError:
        return TORCHVISION_PROBLEM
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a broken build raises RuntimeError, OSError or ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        TORCHVISION_PROBLEM = f"{type(exc).__name__}: {str(exc)[:200]}"
    return TORCHVISION_PROBLEM


def quiet_libraries() -> None:
    """Hide a torchvision that cannot load (:func:`hide_broken_torchvision`), then silence
    diffusers/transformers progress bars and warnings (jobs report progress themselves)."""
    hide_broken_torchvision()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
