"""Progress and previews shared by every stage: the pacing of previews, the teachers named in
progress messages, and several views as one preview image."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

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


def contact_sheet(images: torch.Tensor) -> np.ndarray:
    """K views float [K, 3, H, W] in [0, 1] as one opaque uint8 RGBA image [rows H, cols W, 4],
    ceil(sqrt(K)) per row, white where a row is short (a ``views`` preview)."""
    from ..geometry.export import texture_to_uint8

    k, _, h, w = images.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    sheet = np.full((rows * h, cols * w, 4), 255, np.uint8)
    tiles = texture_to_uint8(images.detach().float().permute(0, 2, 3, 1).cpu())
    for i in range(k):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w, :3] = tiles[i]
    return sheet
