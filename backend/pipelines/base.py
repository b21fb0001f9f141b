"""The Pipeline contract, its parameter schema, and the registry the server reads.

A pipeline is a plain class with class-level metadata (``name``, ``params``, ``presets``,
``inputs``, ``models``) and one method, ``run(request, emit, cancel) -> Result``. It reports
through ``emit`` (progress, previews, log lines) and calls ``cancel.check()`` at least once per
optimisation step. The server validates every submit against the metadata before a job is
queued, so ``run`` receives complete, range-checked parameters.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from shared_protocol.views import MAX_REFERENCES, ViewError, check_angles

# The contract types are the plugin API too: a method module imports them from here or from contracts.
from ..contracts import ORACLE_MAX_MODES, ORACLE_MAX_SIGMA
from ..contracts import TIMESTEP_SCHEDULES, CancelToken, Emitter, JobRequest, ParamError, Result  # noqa: F401
from ..importing import load_reference


@dataclass(frozen=True)
class Param:
    """A pipeline parameter.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"`` or ``"choice"``.
        default: the value when neither the preset nor the submit sets it.
        min, max: inclusive bounds for numbers.
        choices: the allowed values of a ``"choice"``.
        max_len: the longest allowed ``"str"``.
        help: one sentence for people (shown in the Blender panel and ``--help``).
        path: the value names a file on the machine that runs the job. A server refuses such
            values unless started with ``--allow-oracle DIR``, and then accepts only files
            inside DIR; in-process runs take local paths.
        group: the parameter group it belongs to (one of :data:`PARAM_GROUPS`), for clients.
        advanced: shown under "Advanced" by clients (False: among the basic settings).
        default_by: a default that depends on another parameter, as data:
            ``("mode", {"image": 100, "text": 0})``; ``default`` is then None, and a value left
            unset resolves from the other parameter's value (no sentinel values).
        when: the parameter matters only while another one has one of some values, as data:
            ``("mode", ("text",))``; clients hide it (and do not send it) otherwise.
        choice_help: one line for people per choice of a ``"choice"`` (clients show the chosen
            one's beside the field).
    """

    kind: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    max_len: int = 2000
    path: bool = False
    group: str = "general"
    advanced: bool = True
    default_by: tuple[str, dict] | None = None
    when: tuple[str, tuple] | None = None
    choice_help: dict[str, str] | None = None

    def coerce(self, name: str, value: Any) -> Any:
        """Return ``value`` checked and converted to this parameter's kind.

        Raises:
            ParamError: wrong type, out of range or not an allowed choice; the message says
                what is allowed.
        """
        if value is None and self.default is None and self.default_by is None:
            return None  # an optional parameter left unset (its meaning is in the help)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ParamError(f"parameter {name!r} must be true or false, got {value!r}")
            return value
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(f"parameter {name!r} must be a number, got {value!r}")
            if self.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ParamError(f"parameter {name!r} must be a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ParamError(f"parameter {name!r} must be finite")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ParamError(f"parameter {name!r} = {value} is outside the allowed range [{self.min}, {self.max}]")
            return value
        if not isinstance(value, str):
            raise ParamError(f"parameter {name!r} must be text, got {value!r}")
        if self.kind == "choice" and value not in (self.choices or ()):
            raise ParamError(f"parameter {name!r} = {value!r} is not one of {', '.join(self.choices or ())}")
        if len(value) > self.max_len:
            raise ParamError(f"parameter {name!r} is {len(value)} characters long; at most {self.max_len} allowed")
        return value

    @classmethod
    def from_description(cls, d: dict) -> "Param":
        """The parameter a :meth:`describe` dict (e.g. from a server's welcome) stands for."""
        by = d.get("default_by")
        return cls(d["kind"], d.get("default"), d.get("help", ""), d.get("min"), d.get("max"),
                   tuple(d["choices"]) if d.get("choices") is not None else None, path=bool(d.get("path")),
                   group=d.get("group", "general"), advanced=bool(d.get("advanced", True)),
                   default_by=(by["param"], dict(by["values"])) if by else None, when=_when_from(d.get("when")),
                   choice_help=dict(d["choice_help"]) if d.get("choice_help") else None)

    def parse(self, name: str, text: str) -> Any:
        """The value of ``text`` as typed on a command line (``--param name=text``), checked.

        Raises:
            ParamError: not a number, not true/false, out of range, not an allowed choice.
        """
        value: Any = text
        try:
            if self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
        except ValueError:
            raise ParamError(f"parameter {name!r} must be a {'whole ' if self.kind == 'int' else ''}number, "
                             f"got {text!r}") from None
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ParamError(f"parameter {name!r} must be true or false, got {text!r}")
            value = lowered in ("true", "1", "yes", "on")
        return self.coerce(name, value)

    def describe(self) -> dict:
        d = {"kind": self.kind, "default": self.default, "help": self.help}
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.choice_help:
            d["choice_help"] = dict(self.choice_help)
        if self.path:
            d["path"] = True
        d["group"], d["advanced"] = self.group, self.advanced
        if self.default_by is not None:
            d["default_by"] = {"param": self.default_by[0], "values": dict(self.default_by[1])}
        if self.when is not None:
            d["when"] = _when_describe(self.when)
        return d


def _when_describe(when: tuple[str, tuple]) -> dict:
    return {"param": when[0], "values": list(when[1])}


def _when_from(d: dict | None) -> tuple[str, tuple] | None:
    return (d["param"], tuple(d["values"])) if d else None


@dataclass(frozen=True)
class InputSpec:
    """An input array of a pipeline.

    Attributes:
        dtypes: allowed numpy dtype names.
        shape: the expected shape; ``None`` entries are free, ints are fixed; a tuple of ints
            in place of an int lists the allowed values (e.g. channels ``(3, 4)``).
        required: whether every submit must carry it.
        max_elements: upper bound on the number of elements.
        help: one sentence for people.
        when: the input is used only while a parameter has one of some values
            (``("mode", ("image",))``); clients offer and send it only then.
    """

    dtypes: tuple[str, ...]
    shape: tuple[Any, ...]
    required: bool = False
    max_elements: int = 64 * 1024 * 1024
    help: str = ""
    when: tuple[str, tuple] | None = None

    def check(self, name: str, arr: np.ndarray) -> None:
        """Raise :class:`ParamError` when ``arr`` does not fit this spec."""
        try:
            self._check(name, arr)
        except ParamError as exc:
            raise ParamError(f"{exc} ({self.help})" if self.help else str(exc)) from None

    def _check(self, name: str, arr: np.ndarray) -> None:
        if arr.dtype.name not in self.dtypes:
            raise ParamError(f"input {name!r} must have dtype {' or '.join(self.dtypes)}, got {arr.dtype.name}")
        if arr.ndim != len(self.shape):
            raise ParamError(f"input {name!r} must have {len(self.shape)} dimensions {self._shape_text()}, got shape {arr.shape}")
        for axis, (want, got) in enumerate(zip(self.shape, arr.shape)):
            ok = want is None or (got in want if isinstance(want, tuple) else got == want)
            if not ok or got == 0:
                raise ParamError(f"input {name!r} has shape {arr.shape}; expected {self._shape_text()} (axis {axis})")
        if arr.size > self.max_elements:
            raise ParamError(f"input {name!r} has {arr.size} elements; at most {self.max_elements} allowed")

    def _shape_text(self) -> str:
        def one(s: Any) -> str:
            return "N" if s is None else "|".join(map(str, s)) if isinstance(s, tuple) else str(s)
        return "[" + ", ".join(one(s) for s in self.shape) + "]"

    def describe(self) -> dict:
        d = {
            "dtypes": list(self.dtypes),
            "shape": [s if not isinstance(s, tuple) else list(s) for s in self.shape],
            "required": self.required,
            "help": self.help,
        }
        if self.when is not None:
            d["when"] = _when_describe(self.when)
        return d


class Pipeline:
    """Base class of every generation method.

    Class attributes:
        name: the registry name used on the wire and on the CLI.
        title: a short human title.
        params: parameter schema, name -> :class:`Param`.
        presets: preset name -> parameter overrides; ``"default"`` must exist.
        inputs: input name -> :class:`InputSpec`.
        models: preset -> model ids (Hugging Face repo ids) the preset needs.
        implementation: ``"module:Class"`` of the subclass that implements ``run``, for a
            specification class that the server imports without torch; empty when the class
            itself implements ``run``.
        works_on: what it takes from the artist, for clients: ``"prompt"`` (its text
            parameters), ``"image"`` (an input ``image`` uint8 [H, W, 3|4], the picture the
            artist picks), ``"mesh"`` (the selected object, sent as the inputs ``vertices``,
            ``faces`` and, when present, ``uv``, ``texture``, and with a reference image
            ``ref_camera`` and ``ref_fovy``; the result's ``uv`` and ``texture`` go back onto
            it), ``"posed_images"`` (inputs built by a script or the CLI); () for anything else.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    inputs: ClassVar[dict[str, InputSpec]] = {}
    models: ClassVar[dict[str, list[str]]] = {}
    implementation: ClassVar[str] = ""
    works_on: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def reference(cls) -> str:
        """``"module:QualifiedName"`` of the class that runs this pipeline: what the worker
        process imports (a class defined in a test module works as long as that module is
        importable there)."""
        return cls.implementation or f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def needed_models(cls, preset: str, params: dict[str, Any]) -> list[str]:
        """Model ids a job with these resolved parameters loads: the preset's ``models`` (else
        the ``default`` ones), each in the job's ``weights`` variant when it names one (the
        ``tiny`` preset loads the tiny models). A dispatcher with several workers sends the job
        to a worker that already holds them."""
        from ..guidance.registry import variant_of

        ids = cls.models.get(preset) or cls.models.get("default", [])
        weights = params.get("weights")
        if isinstance(weights, str) and weights:
            ids = [variant_of(mid, weights) for mid in ids]
        return sorted(set(ids))

    @classmethod
    def needed_job_files(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """(job id, file name) of earlier jobs' files a job with these parameters reads from
        its sibling job folders; a cluster worker on a node without the server's output folder
        gets them with the job. Default: none."""
        return []

    @classmethod
    def implementation_class(cls) -> "type[Pipeline]":
        """The class whose ``run`` does the work (imports it; torch and the renderers load here).

        Raises:
            ImportError: the implementation module cannot be imported.
        """
        if cls.run is not Pipeline.run:
            return cls
        return load_reference(cls.reference())

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        """Run the method. Subclasses implement it.

        Raises:
            JobCancelled: when ``cancel.check()`` fires.
            ParamError: inputs that turn out to be unusable (e.g. an empty mask).
            backend.models.ModelMissingError: weights not available.
        """
        raise NotImplementedError(f"pipeline {self.name!r} does not implement run()")

    @classmethod
    def resolve(cls, preset: str | None, params: dict[str, Any], inputs: dict[str, np.ndarray]) -> tuple[str, dict]:
        """Validate a submit and merge defaults < preset < params.

        Returns:
            (preset name, complete parameter dict).
        Raises:
            ParamError: unknown preset or parameter, a value out of range, a missing,
                unexpected or malformed input.
        """
        preset, resolved = cls.merge_params(preset, params)
        for key, arr in inputs.items():
            if key not in cls.inputs:
                raise ParamError(f"pipeline {cls.name!r} takes no input {key!r}; known: {', '.join(sorted(cls.inputs)) or 'none'}")
            cls.inputs[key].check(key, arr)
        for key, spec in cls.inputs.items():
            if spec.required and key not in inputs:
                raise ParamError(f"pipeline {cls.name!r} needs the input {key!r} ({spec.help})")
        cls.check_request(resolved, inputs)
        return preset, resolved

    @classmethod
    def merge_params(cls, preset: str | None, params: dict[str, Any]) -> tuple[str, dict]:
        """Defaults < preset < ``params``, each value checked; inputs are not looked at.

        Raises:
            ParamError: unknown preset or parameter, or a value out of range.
        """
        preset = preset or "default"
        if preset not in cls.presets:
            raise ParamError(f"pipeline {cls.name!r} has no preset {preset!r}; choose one of {', '.join(cls.presets)}")
        merged = {k: p.default for k, p in cls.params.items()}
        merged.update(cls.presets[preset])
        for key, value in params.items():
            if key not in cls.params:
                raise ParamError(f"pipeline {cls.name!r} has no parameter {key!r}; known: {', '.join(sorted(cls.params))}")
            merged[key] = value
        resolved = {k: cls.params[k].coerce(k, v) for k, v in merged.items() if cls.params[k].default_by is None or v is not None}
        for key, spec in cls.params.items():  # defaults that depend on another parameter's value
            if key not in resolved:
                other, values = spec.default_by
                if resolved.get(other) not in values:
                    raise ParamError(f"parameter {key!r} has no default for {other}={resolved.get(other)!r}; set it")
                resolved[key] = spec.coerce(key, values[resolved[other]])
        return preset, {k: resolved[k] for k in cls.params}

    @classmethod
    def check_request(cls, params: dict[str, Any], inputs: dict[str, np.ndarray]) -> None:
        """Cross-field checks (e.g. "a prompt or an image"); raise :class:`ParamError`."""

    @classmethod
    def estimate_memory(cls, params: dict[str, Any], inputs: dict[str, np.ndarray]) -> dict[str, int]:
        """Peak device memory of a job, bytes, split by the parameter (or input) that drives
        each part, so that a refusal can name it. Rough upper estimates; {} when unknown."""
        return {}

    @classmethod
    def describe(cls) -> dict:
        """The pipeline's metadata for the server's ``welcome``."""
        return {
            "title": cls.title or cls.name,
            "params": {k: p.describe() for k, p in cls.params.items()},
            "presets": {k: dict(v) for k, v in cls.presets.items()},
            "inputs": {k: s.describe() for k, s in cls.inputs.items()},
            "models": {k: list(v) for k, v in cls.models.items()},
            "works_on": list(cls.works_on),
        }


#: The parameter groups, one vocabulary for every method (clients group their fields by them).
PARAM_GROUPS = ("input", "gaussians", "densification", "teacher", "schedule", "mesh", "texture", "output", "general")

#: The output parameters of every method that writes a textured mesh (``stages.asset_output``),
#: in group ``output``.
OUTPUT_PARAMS = {
    "height": Param("float", 1.0, "the asset's height, metres: it is scaled to it and stands on its origin, the "
                    "bottom centre of its bounding box (0: the job's own scale and place)", min=0.0, max=1000.0,
                    group="output"),
    "normal_map": Param("bool", True, "bake the full-resolution surface into a tangent-space normal map on the "
                        "decimated mesh (glTF normalTexture)", group="output"),
    "remesh": Param("choice", "none", "quad: remesh into quads (Instant Meshes) and bake colour and normals from "
                    "the full-resolution surface onto them", choices=("none", "quad"), group="output"),
    "quad_faces": Param("int", 5000, "remesh=quad: about how many quads", min=100, max=100_000, group="output"),
    "pbr": Param("bool", False, "PBR maps: base colour without baked lighting, roughness and metallic, estimated in "
                 "views of the asset (Marigold IID) and baked into its UVs", group="output"),
}

def grouped(params: dict[str, Param], groups: dict[str, tuple[str, ...]], basic: tuple[str, ...] = (),
            when: dict[str, tuple[str, tuple]] | None = None) -> dict[str, Param]:
    """``params`` with each one's ``group`` set from ``groups`` (group -> names), ``advanced``
    False for the names in ``basic`` and ``when`` set from ``when`` (name -> condition): a
    method's parameter table stays one table, its grouping one more piece of data.

    Raises:
        ValueError: a name in ``groups``, ``basic`` or ``when`` is not a parameter, a group is
            unknown, or a condition names no parameter.
    """
    import dataclasses

    out = dict(params)
    for group, names in groups.items():
        if group not in PARAM_GROUPS:
            raise ValueError(f"unknown parameter group {group!r}; use one of {', '.join(PARAM_GROUPS)}")
        for name in names:
            if name not in out:
                raise ValueError(f"group {group!r} names no parameter {name!r}")
            out[name] = dataclasses.replace(out[name], group=group)
    for name in basic:
        if name not in out:
            raise ValueError(f"basic names no parameter {name!r}")
        out[name] = dataclasses.replace(out[name], advanced=False)
    for name, condition in (when or {}).items():
        if name not in out or condition[0] not in out:
            raise ValueError(f"'when' of {name!r} names a missing parameter ({condition[0]!r})")
        out[name] = dataclasses.replace(out[name], when=(condition[0], tuple(condition[1])))
    return out


def timestep_schedule_param(default: str = "dreamgaussian", own: dict[str, str] | None = None) -> Param:
    """The ``timestep_schedule`` parameter, the same in every method; ``own``: a method's own
    schedules (name -> one line for people), offered before the shared ones."""
    helps = {**(own or {}), **TIMESTEP_SCHEDULES}
    return Param("choice", default, "diffusion timestep schedule of score distillation: "
                 + ", ".join(f"{name}" for name in own or {}) + (", " if own else "")
                 + "dreamgaussian (linear anneal), uniform (DreamFusion), dreamtime (TP-SDS), dtc (DTC123 curriculum)",
                 choices=tuple(helps), group="schedule", choice_help=helps)


def schedule_params(default: str = "dreamgaussian", t_min: int = 20, t_max: int = 980,
                    own: dict[str, str] | None = None) -> dict[str, Param]:
    """The parameters of every stage that distils from a teacher: ``timestep_schedule``, the
    range ``t_min``/``t_max`` and DreamTime's prior ``m1``, ``m2``, ``s1``, ``s2`` (Huang et al.
    2023, section 4; they apply only while ``timestep_schedule`` is ``dreamtime``). ``own``: a
    method's own schedules (:func:`timestep_schedule_param`), which take their numbers from the
    method's parameters, so ``t_min``/``t_max`` apply only to the shared ones. A method checks
    them with :func:`check_schedule_params`."""
    dreamtime = ("timestep_schedule", ("dreamtime",))
    shared = ("timestep_schedule", tuple(TIMESTEP_SCHEDULES)) if own else None
    return {
        "timestep_schedule": timestep_schedule_param(default, own),
        "t_min": Param("int", t_min, "smallest timestep", min=1, max=999, group="schedule", when=shared),
        "t_max": Param("int", t_max, "largest timestep", min=1, max=999, group="schedule", when=shared),
        "m1": Param("float", 800.0, "DreamTime prior: upper end of the plateau of full weight (timesteps)", min=0,
                    max=1000, group="schedule", when=dreamtime),
        "m2": Param("float", 500.0, "DreamTime prior: lower end of the plateau (timesteps, at most m1)", min=0, max=1000,
                    group="schedule", when=dreamtime),
        "s1": Param("float", 300.0, "DreamTime prior: spread of the Gaussian tail above m1 (timesteps)", min=1, max=1000,
                    group="schedule", when=dreamtime),
        "s2": Param("float", 100.0, "DreamTime prior: spread of the Gaussian tail below m2 (timesteps)", min=1, max=1000,
                    group="schedule", when=dreamtime),
    }


def check_schedule_params(params: dict, t_min: str = "t_min", t_max: str = "t_max") -> None:
    """Checks of :func:`schedule_params`' values.

    Raises:
        ParamError: the range is empty, or DreamTime's plateau is upside down (m2 > m1).
    """
    if params.get("timestep_schedule", "dreamgaussian") in TIMESTEP_SCHEDULES and params[t_min] >= params[t_max]:
        raise ParamError(f"'{t_min}' must be below '{t_max}'")
    if params.get("timestep_schedule") == "dreamtime" and params["m2"] > params["m1"]:
        raise ParamError(f"DreamTime's 'm2' ({params['m2']:g}) must not exceed 'm1' ({params['m1']:g}): the prior's "
                         "plateau is [m2, m1]")


#: Bytes per unit in the memory estimates of :meth:`Pipeline.estimate_memory` (rough upper
#: figures chosen from the renderers' and the VAE's buffers, not measured per device):
#: a rendered pixel that a teacher encodes (render buffers, gradients, VAE activations at
#: 512^2: about 1 GiB); a texel being optimised (logits, Adam moments, gradients, samples); a
#: density-grid voxel (grid, filled copy, smoothed copy, mask); a Gaussian (parameters, Adam
#: moments, gradients, per-tile lists).
BYTES_PER_TEACHER_PIXEL = 4096
BYTES_PER_TEXEL = 96
BYTES_PER_VOXEL = 16
BYTES_PER_GAUSSIAN = 2048
#: Teacher weights resident during a job, bytes, by ``weights`` variant (fp32 upper bound).
TEACHER_BYTES = {"default": 5 << 30, "stable": 5 << 30, "xl": 10 << 30, "tiny": 64 << 20, "tiny-xl": 64 << 20}


#: The prior oracle's parameters (``guidance/oracle.py``), in every method that takes teacher=oracle.
PRIOR_ORACLE_PARAMS = {
    "oracle_modes": Param("int", 1, "teacher=oracle: the prior's modes K: the object and its texture's hue turned by "
                          "360 k / K degrees (1: the object alone)", min=1, max=ORACLE_MAX_MODES),
    "oracle_sigma": Param("float", 0.0, "teacher=oracle: each mode's spread, in x0's [-1, 1] units (0: the object "
                          "exactly; above 0 a lightly noised image keeps its own content, as with a real model)",
                          min=0, max=ORACLE_MAX_SIGMA),
}
#: ``grouped(when=...)`` of :data:`PRIOR_ORACLE_PARAMS`: shown only with teacher=oracle.
PRIOR_ORACLE_WHEN = {name: ("teacher", ("oracle",)) for name in PRIOR_ORACLE_PARAMS}


def check_teacher_inputs(params: dict, inputs: dict) -> None:
    """Checks shared by pipelines with a teacher and a reference image: ``teacher="oracle"``
    needs ``oracle_mesh``; a ``mask`` must match the ``image``'s height and width.

    Raises:
        ParamError: with what is missing or mismatched.
    """
    if params["teacher"] == "oracle" and not params["oracle_mesh"]:
        raise ParamError("teacher 'oracle' needs 'oracle_mesh' (a GLB path on the server)")
    if "mask" in inputs and "image" in inputs and inputs["mask"].shape != inputs["image"].shape[:2]:
        raise ParamError(f"the mask is {inputs['mask'].shape} but the image is {inputs['image'].shape[:2]}")


def reference_inputs(when: tuple[str, tuple] | None = ("mode", ("image",))) -> dict[str, InputSpec]:
    """The inputs of the further reference views (see ``shared_protocol.views`` for the wire
    form): ``image_k`` uint8 [H, W, 3|4] and ``mask_k`` uint8 [H, W] for k = 1 .. 7, and
    ``reference_views`` float [K, 2] (azimuth, elevation in degrees of ``image_1`` ..
    ``image_K``). ``when``: the condition under which clients offer them."""
    out: dict[str, InputSpec] = {}
    for k in range(1, MAX_REFERENCES):
        out[f"image_{k}"] = InputSpec(("uint8",), (None, None, (3, 4)), when=when,
                                      help=f"reference image {k + 1} uint8 [H, W, 3|4] seen from row {k} of "
                                           "'reference_views'; alpha = object")
        out[f"mask_{k}"] = InputSpec(("uint8",), (None, None), when=when,
                                     help=f"foreground mask uint8 [H, W] of 'image_{k}' when it is RGB")
    out["reference_views"] = InputSpec(("float32", "float64"), (None, 2), max_elements=2 * MAX_REFERENCES, when=when,
                                       help="the views of image_1 .. image_K: K rows of (azimuth, elevation), degrees "
                                            "(azimuth 90: the object's left side, elevation positive above)")
    return out


def further_references(params: dict, inputs: dict) -> int:
    """K, the number of reference views besides the front: the rows of ``reference_views`` (with
    the oracle, which renders its own references, images are optional), else the ``image_k``
    given. Not checked: :func:`check_reference_inputs` does that."""
    views = inputs.get("reference_views")
    if views is not None:
        return int(np.asarray(views).shape[0])
    return sum(1 for k in range(1, MAX_REFERENCES) if f"image_{k}" in inputs)


def check_reference_inputs(params: dict, inputs: dict) -> None:
    """Checks of the further reference views (:func:`reference_inputs`): images numbered from 1
    without gaps, one row of ``reference_views`` per image, at most ``MAX_REFERENCES`` images with
    the front, angles within ``shared_protocol.views``' ranges, each mask the size of its image,
    image mode only.

    Raises:
        ParamError: one sentence that says what is wrong and what to send instead.
    """
    for key in inputs:
        if re.fullmatch(r"mask_\d+", key) and f"image_{key.split('_')[1]}" not in inputs:
            raise ParamError(f"'{key}' is given without 'image_{key.split('_')[1]}': send the image with its mask")
    numbered = sorted(int(key.split("_")[1]) for key in inputs if re.fullmatch(r"image_\d+", key))
    views = inputs.get("reference_views")
    if not numbered and views is None:
        return
    if params.get("mode", "image") != "image":
        raise ParamError("further reference images ('image_1' ...) are for image mode: set mode to 'image' or send "
                         "the prompt alone")
    count = further_references(params, inputs)
    if count + 1 > MAX_REFERENCES:
        raise ParamError(f"{count + 1} reference images were given; at most {MAX_REFERENCES} (the front and "
                         f"{MAX_REFERENCES - 1} more) are allowed")
    if numbered != list(range(1, len(numbered) + 1)):
        raise ParamError(f"the further reference images must be numbered image_1 .. image_K without gaps; got "
                         f"{', '.join(f'image_{k}' for k in numbered)}")
    if numbered and "image" not in inputs:
        raise ParamError("further reference images need the front image 'image' as well")
    if views is None:
        raise ParamError(f"{len(numbered)} further reference image(s) were given without 'reference_views': send one "
                         "row of (azimuth, elevation) in degrees per image")
    if numbered and len(numbered) != count:
        raise ParamError(f"'reference_views' has {count} rows but {len(numbered)} further images were given: one row "
                         "per image")
    if not numbered and params.get("teacher") != "oracle":
        raise ParamError("'reference_views' is given without images: send image_1 .. image_K with it (only the oracle "
                         "teacher renders its own references)")
    for row, (azimuth, elevation) in enumerate(np.asarray(views, np.float64)):
        try:
            check_angles(float(azimuth), float(elevation), f"reference view {row + 1} (image_{row + 1})")
        except ViewError as exc:
            raise ParamError(str(exc)) from None
    for k in numbered:
        mask = inputs.get(f"mask_{k}")
        if mask is not None and mask.shape != inputs[f"image_{k}"].shape[:2]:
            raise ParamError(f"mask_{k} is {mask.shape} but image_{k} is {inputs[f'image_{k}'].shape[:2]}: a mask must "
                             "be the size of its image")


#: Bytes per pixel of a reference view during optimisation (its render, alpha and depth, their
#: gradients, the targets): a rough upper figure, like the others above.
BYTES_PER_REFERENCE_PIXEL = 256


def reference_memory(params: dict, inputs: dict) -> int:
    """Bytes the reference views take beyond the first: renders and gradients at ``ref_size`` and
    the teacher's cached condition (CLIP embedding and VAE latents) of each."""
    extra = further_references(params, inputs)
    return extra * (params.get("ref_size", 256) ** 2 * BYTES_PER_REFERENCE_PIXEL + (1 << 20))


#: The pipelines known to this process, by name. Filled by :func:`register`.
REGISTRY: dict[str, type[Pipeline]] = {}


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: add a pipeline to :data:`REGISTRY`.

    Raises:
        ValueError: the name is empty, taken by another class, or there is no "default" preset.
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if "default" not in cls.presets:
        raise ValueError(f"pipeline {cls.name!r} must define a 'default' preset")
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"pipeline name {cls.name!r} is already registered by {other.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls
