"""A pipeline's parameters in the panel, read from the server's description (its ``welcome``):
no parameter name is written in the add-on.

Blender properties are declared when a class is registered, but a server's parameters are
known only once it answers, and differ from server to server (a studio's plug-in methods). So
each parameter's value is an ID property of the scene's settings (``scene.splatsmith``), keyed
``"PIPELINE.NAME"``, saved with the .blend, with its range, help text and choices set through
``id_properties_ui`` (Blender draws and clamps it like any property). A choice is an integer
property with enum items; a parameter whose default depends on another one (``default_by``) or
that may stay unset (default None) has a second key ``"PIPELINE.NAME:set"``: until the artist
ticks it, the panel shows the default the server will use and sends nothing.

What a submit carries is what differs from the selected preset: presets keep their meaning,
and the request stored on a result names only what the artist chose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "choice": int}
#: ID properties hold 32-bit signed integers.
_INT_RANGE = (-(2**31), 2**31 - 1)


def key(pipeline: str, name: str) -> str:
    """The ID-property key of a parameter's value."""
    return f"{pipeline}.{name}"


def set_key(pipeline: str, name: str) -> str:
    """The ID-property key of "the artist set this optional parameter"."""
    return f"{pipeline}.{name}:set"


def is_optional(spec: dict) -> bool:
    """A parameter the server resolves itself unless it is sent (``default_by`` or no default)."""
    return bool(spec.get("default_by")) or spec.get("default") is None


def preset_values(info: dict, preset: str) -> dict[str, Any]:
    """The pipeline's defaults < ``preset`` (wire values; ``default_by`` ones stay None)."""
    values = {name: spec.get("default") for name, spec in info.get("params", {}).items()}
    values.update(info.get("presets", {}).get(preset, {}))
    return values


def _to_property(spec: dict, value: Any) -> Any:
    kind = spec["kind"]
    if kind == "choice":
        choices = spec.get("choices") or []
        return choices.index(value) if value in choices else 0
    if value is None:
        lo = spec.get("min")
        value = lo if lo is not None and kind in ("int", "float") else _KINDS[kind]()
    if kind == "int":
        return int(min(max(int(value), _INT_RANGE[0]), _INT_RANGE[1]))
    return _KINDS[kind](value)


def _from_property(spec: dict, value: Any) -> Any:
    kind = spec["kind"]
    if kind == "choice":
        choices = spec.get("choices") or [""]
        return choices[min(max(int(value), 0), len(choices) - 1)]
    return _KINDS[kind](value)


def value(settings, pipeline: str, name: str, spec: dict) -> Any:
    """A parameter's wire value as the panel holds it (None when missing)."""
    stored = settings.get(key(pipeline, name))
    return None if stored is None else _from_property(spec, stored)


def _ui(settings, pipeline: str, name: str, spec: dict) -> None:
    ui = settings.id_properties_ui(key(pipeline, name))
    help_text = spec.get("help", "")
    kind = spec["kind"]
    if kind == "choice":
        described = spec.get("choice_help") or {}
        ui.update(description=help_text, items=[(c, c.replace("_", " ").capitalize(), described.get(c, help_text), i)
                                               for i, c in enumerate(spec.get("choices") or [])])
    elif kind in ("int", "float"):
        cast = int if kind == "int" else float
        lo = cast(max(spec["min"], _INT_RANGE[0])) if spec.get("min") is not None else None
        hi = cast(min(spec["max"], _INT_RANGE[1])) if spec.get("max") is not None else None
        bounds = {k: v for k, v in (("min", lo), ("soft_min", lo), ("max", hi), ("soft_max", hi)) if v is not None}
        if kind == "float":
            default = spec.get("default")
            small = min((abs(v) for v in (default, lo, hi) if isinstance(v, (int, float)) and v), default=1.0)
            bounds["precision"] = min(6, max(3, 1 - math.floor(math.log10(small))))  # 2e-5 shows as 0.00002
        ui.update(description=help_text, **bounds)
    else:
        ui.update(description=help_text)


def sync(settings, pipelines: dict, reset: tuple[str, str] | None = None) -> None:
    """Create the value of every parameter of every pipeline that ``settings`` lacks (from the
    defaults and the default preset) and refresh each one's range, help and choices from the
    server's description. ``reset=(pipeline, preset)`` puts that pipeline's values back to the
    preset's and clears its "set" marks (the artist chose a preset)."""
    for pipeline, info in pipelines.items():
        preset = reset[1] if reset and reset[0] == pipeline else "default"
        base = preset_values(info, preset)
        for name, spec in info.get("params", {}).items():
            if spec.get("kind") not in _KINDS:
                continue
            k = key(pipeline, name)
            stored = settings.get(k)
            wanted_type = _KINDS[spec["kind"]]
            fresh = stored is None or type(stored) is not wanted_type or (reset and reset[0] == pipeline)
            if fresh:
                settings[k] = _to_property(spec, base.get(name))
            if is_optional(spec) and (fresh or set_key(pipeline, name) not in settings):
                settings[set_key(pipeline, name)] = False
            _ui(settings, pipeline, name, spec)


def panel_values(settings, pipeline: str, info: dict) -> dict[str, Any]:
    """Every parameter's wire value as the panel holds it (None where not created yet)."""
    return {name: value(settings, pipeline, name, spec) for name, spec in info.get("params", {}).items()}


def holds(condition: dict | None, values: dict) -> bool:
    """Whether a ``when`` condition (``{"param", "values"}``) holds for parameter ``values``."""
    return not condition or values.get(condition["param"]) in condition["values"]


def resolved_default(spec: dict, values: dict, base: dict, name: str) -> Any:
    """What the server uses for an optional parameter left unset (None: the method decides),
    given the other parameters' ``values`` and the preset's ``base``."""
    by = spec.get("default_by")
    if by:
        return by["values"].get(values.get(by["param"]))
    return base.get(name)


def collect(settings, pipeline: str, info: dict, preset: str) -> dict[str, Any]:
    """The parameters to submit: those whose panel value differs from the preset's, and the
    optional ones the artist set; parameters whose ``when`` does not hold are left out."""
    base = preset_values(info, preset)
    values = panel_values(settings, pipeline, info)
    out: dict[str, Any] = {}
    for name, spec in info.get("params", {}).items():
        current = values[name]
        if current is None or not holds(spec.get("when"), values):
            continue
        if is_optional(spec):
            if settings.get(set_key(pipeline, name)):
                out[name] = current
        elif current != base.get(name) and not (spec["kind"] == "float" and base.get(name) is not None
                                               and math.isclose(current, base[name], rel_tol=1e-6, abs_tol=1e-12)):
            out[name] = current
    return out


def label_text(name: str) -> str:
    return name.replace("_", " ").capitalize()


@dataclass
class Row:
    """One parameter as the panel draws it.

    Attributes:
        name: the parameter; path: its value's property path on the settings (``'["k"]'``);
        set_path: the "set" mark's path for an optional parameter ("" otherwise);
        is_set: whether that mark is ticked; hint: what the server uses while it is not;
        group: the parameter's group; expand: draw a choice as buttons;
        note: one line describing the chosen value of a choice whose values the server
            describes (``choice_help``), e.g. what a timestep schedule does ("" otherwise).
    """

    name: str
    label: str
    path: str
    set_path: str
    is_set: bool
    hint: str
    group: str
    expand: bool
    note: str = ""


def rows(settings, pipeline: str, info: dict, preset: str, advanced: bool) -> list[Row]:
    """The rows of the basic (``advanced=False``) or advanced parameters, in the pipeline's
    order, without those whose ``when`` does not hold or whose value is not created yet."""
    base = preset_values(info, preset)
    values = panel_values(settings, pipeline, info)
    out = []
    for name, spec in info.get("params", {}).items():
        if bool(spec.get("advanced", True)) != advanced or values[name] is None or not holds(spec.get("when"), values):
            continue
        set_path, is_set, hint = "", True, ""
        if is_optional(spec):
            set_path = f'["{set_key(pipeline, name)}"]'
            is_set = bool(settings.get(set_key(pipeline, name)))
            default = resolved_default(spec, values, base, name)
            hint = "the method's own" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
            if spec.get("default_by"):
                hint += f" (for {spec['default_by']['param']})"
        expand = spec["kind"] == "choice" and len(spec.get("choices") or ()) <= 3
        note = (spec.get("choice_help") or {}).get(values[name], "") if spec["kind"] == "choice" else ""
        out.append(Row(name, label_text(name), f'["{key(pipeline, name)}"]', set_path, is_set, hint,
                       spec.get("group", "general"), expand, note))
    return out


def label_for(info: dict, values: dict, image_name: str = "") -> str:
    """A job's label: the image's name when one is sent, else the first non-empty basic text
    parameter in ``values`` (a prompt), else the pipeline's title."""
    if image_name:
        return image_name[:48]
    for name, spec in info.get("params", {}).items():
        if spec["kind"] == "str" and not spec.get("advanced", True) and not spec.get("path") \
                and holds(spec.get("when"), values) and str(values.get(name) or "").strip():
            return str(values[name]).strip()[:48]
    return str(info.get("title") or "Splatsmith")[:48]


def input_applies(info: dict, input_name: str, values: dict) -> bool:
    """Whether the pipeline takes ``input_name`` given parameter ``values`` (wire values, e.g.
    :func:`panel_values`, or a preset's values updated with a submit's parameters)."""
    spec = info.get("inputs", {}).get(input_name)
    return spec is not None and holds(spec.get("when"), values)
