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
