"""Splatsmith for Blender: generate 3D assets with a Splatsmith backend and stream them into
the scene. Registration only; see operators.py, panels.py, scene_io.py."""
from . import client_glue, operators, panels, preferences, properties, refine

_MODULES = (preferences, properties, operators, refine, panels)


def register() -> None:
    for module in _MODULES:
        module.register()
    client_glue.start_timer()


def unregister() -> None:
    client_glue.stop()
    for module in reversed(_MODULES):
        module.unregister()
