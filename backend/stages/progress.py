"""Progress and preview pacing shared by every stage."""
from __future__ import annotations

import time

#: Least time between two previews of one kind, seconds (previews cost a device-to-host copy).
PREVIEW_INTERVAL_S = 0.5


class PreviewThrottle:
    """Says when a preview is due: at most once per ``interval_s`` seconds, and always at the
    last step.

    Args:
        interval_s: least time between two previews.
        first: whether the first call is due at once (False: only after ``interval_s``).
    """

    def __init__(self, interval_s: float = PREVIEW_INTERVAL_S, first: bool = True):
        self.interval_s = interval_s
        self._last = 0.0 if first else time.monotonic()

    def due(self, step: int, total: int) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval_s or step == total:
            self._last = now
            return True
        return False


def teacher_note(weights: dict[str, float], t: int | None = None) -> str:
    """A progress message's account of a step's teachers by registry name -> weight, e.g.
    ``"t=512, Zero-1-to-3 x1.00 + Stable Diffusion x0.25"`` (teachers of weight 0 left out;
    ``t`` left out when None)."""
    from ..guidance.registry import SHORT_NAMES

    taught = " + ".join(f"{SHORT_NAMES.get(k, k)} x{w:.2f}" for k, w in weights.items() if w > 0) or "no teacher"
    return taught if t is None else f"t={t}, {taught}"
