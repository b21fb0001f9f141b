"""Quiet third-party libraries inside jobs."""
from __future__ import annotations


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and warnings (jobs report progress themselves)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
