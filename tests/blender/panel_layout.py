"""A stand-in for Blender's UILayout that records what a panel draws (the panel tests share it)."""
from __future__ import annotations


class PanelLayout:
    """Records what a panel draws. Blender's UILayout exists only inside a drawing window,
    which a headless Blender has not: this stand-in records the calls, and every property path
    drawn is resolved on the real settings."""

    def __init__(self, log: list):
        self.log, self.enabled = log, True

    def _child(self, *args, **kwargs):
        return PanelLayout(self.log)

    row = column = box = _child

    def prop(self, data, path, **kwargs):
        data.path_resolve(path) if path.startswith("[") else getattr(data, path)
        self.log.append(("prop", path, kwargs.get("text")))

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def operator(self, idname, **kwargs):
        self.log.append(("operator", idname, kwargs.get("text")))
        return type("Props", (), {})()

    def template_ID(self, *args, **kwargs):
        self.log.append(("template_ID",))

    def progress(self, **kwargs):
        self.log.append(("progress",))
