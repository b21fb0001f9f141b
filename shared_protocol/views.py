"""Reference views of an object: several images of it, each with the orbit camera it was seen from.

The wire form (what a client sends with an image-conditioned method):

- ``image`` (and optionally ``mask``): the first reference, the object's front, seen from azimuth
  0 at the method's ``elevation`` parameter;
- ``image_1`` .. ``image_7`` (each optionally with ``mask_1`` .. ``mask_7``): the further
  references, numbered from 1 without gaps;
- ``reference_views``: float32 [K, 2], row k-1 the view of ``image_k`` as (azimuth, elevation) in
  degrees; K = the number of further references (at most :data:`MAX_REFERENCES` - 1).

Angles follow the project's orbit convention (``backend/cameras.py``): azimuth 0 is the front,
positive azimuth turns counter-clockwise seen from above, so azimuth 90 puts the camera on the
side that is on the right in the front view, which shows the object's own *left* side (an object
facing the viewer has its left hand there); elevation is positive when the camera is above.

This module has no dependency beyond the standard library: the add-on, the CLI and the
backend's specifications read one definition of the named views and of the limits.
"""
from __future__ import annotations

import math
import re

#: At most this many reference images per job, the front included.
MAX_REFERENCES = 8

#: Named views -> (azimuth, elevation) in degrees; an elevation of None means the method's
#: ``elevation`` (the front's). ``left`` and ``right`` are the object's own sides.
NAMED_VIEWS: dict[str, tuple[float, float | None]] = {
    "front": (0.0, None),
    "back": (180.0, 0.0),
    "left": (90.0, 0.0),
    "right": (-90.0, 0.0),
    "top": (0.0, 90.0),
}

#: One line per named view, for people (the add-on's menu, the CLI's help).
NAMED_VIEW_HELP = {
    "front": "azimuth 0 at the method's elevation (the first image)",
    "back": "azimuth 180, elevation 0",
    "left": "the object's left side: azimuth 90 (the camera on the right of the front view), elevation 0",
    "right": "the object's right side: azimuth -90, elevation 0",
    "top": "straight above: azimuth 0, elevation 90 (the front at the bottom of the image)",
}

#: Allowed ranges, degrees (inclusive).
AZIMUTH_RANGE = (-360.0, 360.0)
ELEVATION_RANGE = (-90.0, 90.0)

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_ANGLES = re.compile(rf"^\s*({_NUMBER})\s*(?:,\s*({_NUMBER})\s*)?$")


class ViewError(ValueError):
    """A view that cannot be used; the message is one sentence that says what to write instead."""


def check_angles(azimuth: float, elevation: float, what: str = "the view") -> tuple[float, float]:
    """(azimuth, elevation) checked against :data:`AZIMUTH_RANGE` and :data:`ELEVATION_RANGE`.

    Raises:
        ViewError: a value that is not finite or out of range.
    """
    if not (math.isfinite(azimuth) and math.isfinite(elevation)):
        raise ViewError(f"{what} has an angle that is not a finite number")
    if not AZIMUTH_RANGE[0] <= azimuth <= AZIMUTH_RANGE[1]:
        raise ViewError(f"{what} has azimuth {azimuth:g}, outside [{AZIMUTH_RANGE[0]:g}, {AZIMUTH_RANGE[1]:g}] degrees")
    if not ELEVATION_RANGE[0] <= elevation <= ELEVATION_RANGE[1]:
        raise ViewError(f"{what} has elevation {elevation:g}, outside [{ELEVATION_RANGE[0]:g}, "
                        f"{ELEVATION_RANGE[1]:g}] degrees")
    return float(azimuth), float(elevation)


def parse_view(text: str, what: str = "the view") -> tuple[float, float | None]:
    """A view as written after ``@`` on a command line: ``AZIMUTH``, ``AZIMUTH,ELEVATION`` (degrees)
    or a name of :data:`NAMED_VIEWS`. Returns (azimuth, elevation or None: elevation 0 for a bare
    azimuth, the method's elevation for ``front``).

    Raises:
        ViewError: neither form, or an angle out of range.
    """
    name = text.strip().lower()
    if name in NAMED_VIEWS:
        return NAMED_VIEWS[name]
    match = _ANGLES.match(text)
    if match is None:
        raise ViewError(f"{what} {text!r} is neither AZIMUTH[,ELEVATION] in degrees nor one of "
                        f"{', '.join(NAMED_VIEWS)}")
    azimuth = float(match.group(1))
    elevation = float(match.group(2)) if match.group(2) is not None else 0.0
    return check_angles(azimuth, elevation, what)


def split_image_view(text: str) -> tuple[str, str | None]:
    """``PATH@VIEW`` -> (PATH, VIEW); a text without ``@`` (or whose last ``@`` is part of an
    existing file's name, checked by the caller) -> (PATH, None)."""
    path, sep, view = text.rpartition("@")
    return (path, view) if sep and path else (text, None)
