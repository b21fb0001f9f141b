"""Reference-image preparation for image-to-3D (DreamGaussian's ``process.py``).

The object's mask comes from the image's alpha; for an RGB image without alpha, from a
background-removal model (``rembg`` with its U^2-Net weights) when those are installed
locally, otherwise from a mask image the user gives; otherwise a clear error says so. The
object is then recentred and rescaled so that its bounding box's longer side fills
``fill`` (80%) of a square ``size`` x ``size`` (256) view, on a white background.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


class MaskError(ValueError):
    """No usable foreground mask."""


def u2net_home() -> Path:
    """Where rembg keeps its models: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else
    ``~/.u2net`` (rembg's ``BaseSession.u2net_home``)."""
    return Path(os.path.expanduser(os.environ.get("U2NET_HOME", os.path.join(os.environ.get("XDG_DATA_HOME", "~"),
                                                                           ".u2net"))))


def rembg_available() -> bool:
    """Whether rembg (the ``matting`` extra) and its default U^2-Net weights (``u2net.onnx`` in
    :func:`u2net_home`) are present locally: rembg would otherwise download them during a job."""
    try:
        import rembg  # noqa: F401
    except ImportError:
        return False
    return (u2net_home() / "u2net.onnx").is_file()


class ImageFileError(ValueError):
    """A file that is not an image (or not one PIL can read): one sentence naming it."""


def read_image_file(path: str | Path, mode: str = "auto", what: str = "image") -> np.ndarray:
    """The pixels of an image file as uint8: ``mode="auto"`` keeps RGBA where the file has
    alpha (RGBA, LA, P, PA) and gives RGB [H, W, 3] otherwise; ``"L"`` gives [H, W].

    Raises:
        FileNotFoundError: no such file.
        ImageFileError: the file is not an image PIL can read (a text file named ``.png``, a
            truncated download): the sentence names the file and what it should be; ``what`` says
            which input it was (``--mask``, ...).
    """
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        with Image.open(path) as im:
            if mode == "auto":
                mode = "RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{what} {path} is not an image that can be read ({type(exc).__name__}): give a PNG or "
                             "JPEG file" + (", white where the object is" if mode == "L" else "")) from None


def load_rgba(image: np.ndarray | str | Path, mask: np.ndarray | str | Path | None = None) -> np.ndarray:
    """An RGBA uint8 [H, W, 4] image whose alpha is the object's mask.

    Args:
        image: uint8 [H, W, 3|4] array or an image file.
        mask: for RGB images: uint8/bool [H, W] (non-zero = object) or an image file.
    Raises:
        MaskError: an RGB image with no mask given and no background-removal model present; a
            mask of the wrong size; an empty mask.
        ImageFileError: a path that is not an image file.
    """
    if not isinstance(image, np.ndarray):
        image = read_image_file(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise MaskError(f"the image must be uint8 RGB or RGBA [H, W, 3|4], got {image.dtype} {image.shape}")
    if image.shape[2] == 4 and mask is None and image[..., 3].min() < 255:
        rgba = image
    else:
        rgb = image[..., :3]
        if mask is not None:
            if not isinstance(mask, np.ndarray):
                mask = read_image_file(mask, "L", "mask")
            if mask.shape[:2] != rgb.shape[:2]:
                raise MaskError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}")
            mask = np.asarray(mask)
            threshold = 0 if mask.dtype == bool or mask.max() <= 1 else 127
            alpha = (mask > threshold).astype(np.uint8) * 255
        elif rembg_available():
            import rembg

            alpha = np.asarray(rembg.remove(Image.fromarray(rgb)).convert("RGBA"))[..., 3]
        else:
            raise MaskError(
                "the image has no transparency and no foreground mask was given: pass an RGBA image whose alpha is the "
                "object, or a mask (--mask FILE, white = object), or install the matting extra (pip install "
                "'splatsmith[matting]') with rembg's U^2-Net weights (u2net.onnx) in ~/.u2net"
            )
        rgba = np.concatenate([rgb, alpha[..., None]], -1)
    if (rgba[..., 3] > 127).sum() < 16:
        raise MaskError("the foreground mask is empty: nothing to reconstruct")
    return rgba


def object_box(rgba: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), the bounding box of the object (alpha > 0.5) in an RGBA image, ends
    exclusive.

    Raises:
        ValueError: the alpha channel holds no object pixel."""
    ys, xs = np.nonzero(rgba[..., 3] > 127)
    if len(ys) == 0:
        raise ValueError("the image has no object pixels (its alpha or mask is empty)")
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def fill_scale(height: int, width: int, size: int, fill: float) -> float:
    """Output pixels per input pixel that make an object of ``height`` x ``width`` pixels fill
    ``fill`` x ``size`` with its longer side (DreamGaussian's border ratio 0.2 at fill 0.8)."""
    return max(1, int(round(size * fill))) / max(height, width)


def recenter(rgba: np.ndarray, size: int = 256, fill: float = 0.8, scale: float | None = None) -> np.ndarray:
    """Crop the object (alpha > 0.5) and scale it so that its longer side is ``fill`` x
    ``size``, centred in a ``size`` x ``size`` RGBA image (DreamGaussian's border ratio 0.2).
    ``scale``: output pixels per input pixel instead (:func:`recenter_views`).
    Returns uint8 [size, size, 4] with straight alpha."""
    y0, y1, x0, x1 = object_box(rgba)
    crop = rgba[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    if scale is None:
        scale = fill_scale(h, w, size, fill)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    resized = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.LANCZOS))
    out = np.zeros((size, size, 4), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


#: Above this absolute elevation (degrees) a further view is scaled by the object's width, not
#: its height (:func:`recenter_views`).
STEEP_VIEW_DEGREES = 45.0


def recenter_views(rgbas: list[np.ndarray], elevations: list[float], size: int = 256,
                   fill: float = 0.8) -> tuple[list[np.ndarray], list[dict]]:
    """Several photos of one object recentred so that its size agrees across them.

    The first (the front) is recentred as a single reference is (:func:`recenter`: its longer
    side ``fill`` x ``size``). Each further image is centred the same way but scaled so that one
    extent of the object matches the front's recentred one: its *height* for a view within
    :data:`STEEP_VIEW_DEGREES` of the horizon (turning about the vertical axis keeps an object's
    height, while its width changes with the azimuth), its *width* for a steeper view (a view
    from above at azimuth 0 sees the front's left-right extent across the image). This matching
    is our choice (no reference implementation takes several photos); with orbit cameras at one
    radius it is exact up to perspective. An object that would overflow the frame is scaled to
    fit it instead, and the report says so.

    Args:
        rgbas: uint8 [H_k, W_k, 4] with straight alpha (the object), any sizes.
        elevations: each view's elevation, degrees (the first is the front's).
        size: the output side, pixels. fill: the front's longer side, a fraction of ``size``.
    Returns:
        (uint8 [size, size, 4] per image, a report per image: ``matched`` ("front", "height" or
        "width"), ``scale`` (output pixels per input pixel), ``fits`` (False where the
        matched scale had to be reduced)).
    Raises:
        ValueError: an image without object pixels.
    """
    y0, y1, x0, x1 = object_box(rgbas[0])
    front_scale = fill_scale(y1 - y0, x1 - x0, size, fill)
    front_h, front_w = (y1 - y0) * front_scale, (x1 - x0) * front_scale
    out = [recenter(rgbas[0], size, fill)]
    reports = [{"matched": "front", "scale": round(front_scale, 5), "fits": True}]
    for rgba, elevation in zip(rgbas[1:], elevations[1:]):
        y0, y1, x0, x1 = object_box(rgba)
        h, w = y1 - y0, x1 - x0
        steep = abs(elevation) > STEEP_VIEW_DEGREES
        scale = front_w / w if steep else front_h / h
        fits = max(h, w) * scale <= size
        if not fits:
            scale = size / max(h, w)
        out.append(recenter(rgba, size, fill, scale=scale))
        reports.append({"matched": "width" if steep else "height", "scale": round(scale, 5), "fits": bool(fits)})
    return out, reports


def to_white_background(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float32 [H, W, 3] composited on white, alpha float32 [H, W]) in [0, 1]."""
    f = rgba.astype(np.float32) / 255.0
    a = f[..., 3:]
    return f[..., :3] * a + (1.0 - a), a[..., 0]


def demo_photo():
    """scikit-image's cat photo (Chelsea) with a hand-set elliptical foreground mask around it
    (the demo must run with nothing downloaded, so no segmentation model is used).
    Returns (rgb uint8 [300, 451, 3], mask uint8 [300, 451], 255 = object)."""
    from skimage import data

    rgb = data.chelsea()
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    mask = ((((yy - 150) / 135) ** 2 + ((xx - 230) / 160) ** 2) < 1).astype(np.uint8) * 255
    return rgb, mask
