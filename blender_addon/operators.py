"""Operators, usable from the panel, scripts and batch runs. With ``wait=True`` an operator
pumps the client itself until the job ends (timers do not run in background mode).

Every failure is reported as one sentence (``report({"ERROR"})`` and the panel), never as a
traceback: the add-on stays usable and the next attempt works once the cause is fixed.
"""
from __future__ import annotations

import json
import os
import random

import bpy
import numpy as np

from shared_protocol.client import ClientError
from shared_protocol.views import MAX_REFERENCES, ViewError, check_angles

from . import client_glue, params, properties, scene_io


def _fail(op, message: str):
    op.report({"ERROR"}, message)
    client_glue.session.error = message
    return {"CANCELLED"}


def _random_seed(avoid: int | None = None) -> int:
    seed = random.SystemRandom().randrange(0, 2**31 - 1)
    return seed + 1 if seed == avoid else seed


def _load_inputs(request: dict) -> dict:
    """The input arrays of a request: the reference image from its file or its .blend image, and
    its foreground mask likewise (``mask_path`` / ``mask_name``). Raises ValueError with a
    sentence for the artist."""
    inputs = _load_image(request)
    mask = _load_mask(request, inputs.get("image"), "the mask", "the image")
    if mask is not None:
        inputs["mask"] = mask
    references = request.get("references") or []
    if references and "image" not in inputs:
        raise ValueError("further views are given without the front image: pick the front image too")
    if len(references) + 1 > MAX_REFERENCES:
        raise ValueError(f"{len(references) + 1} reference images; at most {MAX_REFERENCES} (the front and "
                         f"{MAX_REFERENCES - 1} more)")
    views = []
    for k, ref in enumerate(references, 1):
        image = _load_image(ref, f"view {k}'s image").get("image")
        if image is None:
            raise ValueError(f"further view {k} has no image: pick one or remove the view")
        inputs[f"image_{k}"] = image
        mask = _load_mask(ref, image, f"view {k}'s mask", "its image")
        if mask is not None:
            inputs[f"mask_{k}"] = mask
        try:
            views.append(check_angles(float(ref.get("azimuth", 0.0)), float(ref.get("elevation", 0.0)), f"further view {k}"))
        except ViewError as exc:
            raise ValueError(str(exc)) from None
    if views:
        inputs["reference_views"] = np.array(views, np.float32)
    return inputs


def _load_mask(source: dict, image, mask_words: str, image_words: str):
    """The foreground mask uint8 [H, W] named by ``source``'s ``mask_path`` / ``mask_name``, or
    None when it names none; ``image`` is the picture it belongs to (None: not picked). Raises
    ValueError with a sentence for the artist (``mask_words`` and ``image_words`` name the two)."""
    mask = _load_image({"image_path": source.get("mask_path"), "image_name": source.get("mask_name")}, mask_words)
    if not mask:
        return None
    if image is None:
        raise ValueError("a mask is given without a reference image: pick the image too")
    pixels = mask["image"]
    if pixels.shape[:2] != image.shape[:2]:
        raise ValueError(f"{mask_words} is {pixels.shape[1]}x{pixels.shape[0]} but {image_words} is "
                         f"{image.shape[1]}x{image.shape[0]}: they must be the same size")
    return scene_io.mask_from_rgba(pixels)


def _load_image(request: dict, what: str = "reference image") -> dict:
    """``{"image": uint8 [H, W, 4]}`` from ``image_name`` (in the .blend) or ``image_path``, or {}.
    Raises ValueError with a sentence for the artist."""
    if request.get("image_name"):
        image = bpy.data.images.get(request["image_name"])
        if image is None:
            raise ValueError(f"the image {request['image_name']!r} is no longer in this .blend")
        if not image.has_data and image.source == "FILE":
            image.reload()
        if image.size[0] == 0:
            raise ValueError(f"the image {image.name!r} has no pixels (is its file missing?)")
        return {"image": scene_io.rgba_from_image(image)}
    if request.get("image_path"):
        path = bpy.path.abspath(request["image_path"])
        if not os.path.isfile(path):
            raise ValueError(f"{what} {path!r} not found")
        try:
            return {"image": scene_io.load_image_file(path)}
        except RuntimeError as exc:
            raise ValueError(f"Blender cannot read {path!r} as an image ({exc}): give a PNG or JPEG file") from None
    return {}


def run_request(op, request: dict, wait: bool, timeout: float, inputs: dict | None = None, attach=None,
                what: str = "job", done: str = ""):
    """Submit ``request`` (pipeline, preset, seed, params, label, image source), optionally wait.

    ``inputs`` are sent with the reference image loaded from the request's source; ``attach``
    (``callable(state)``) runs once the job is accepted, before any preview is applied (texture
    refinement sets its scene hooks there); ``what`` and ``done`` word the reports.
    """
    try:
        inputs = {**(inputs or {}), **_load_inputs(request)}
    except ValueError as exc:
        return _fail(op, f"Splatsmith: {exc}")
    source = {k: request[k] for k in ("image_path", "image_name", "mask_path", "mask_name", "references") if request.get(k)}
    try:
        state = client_glue.submit(request["pipeline"], request["params"], inputs, request["preset"], request["seed"],
                                   request["label"], source)
        if attach is not None:
            attach(state)
        if wait:
            client_glue.wait(state, timeout or None)
    except ClientError as exc:
        return _fail(op, f"Splatsmith: {client_glue.explain(exc.code, exc.message)}")
    if wait and not state.result_object:
        return _fail(op, f"Splatsmith: {what} {state.handle.state}: {state.message}")
    op.report({"INFO"}, f"Splatsmith: {done or 'created ' + state.result_object}" if wait else f"Splatsmith: {what} submitted")
    return {"FINISHED"}


class SPLATSMITH_OT_connect(bpy.types.Operator):
    bl_idname = "splatsmith.connect"
    bl_label = "Connect"
    bl_description = "Connect to the Splatsmith backend and read its capabilities"

    address: bpy.props.StringProperty(name="Address", default="")

    def execute(self, context):
        try:
            welcome = client_glue.connect(self.address or None)
            client_glue.refresh_jobs()
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        self.report({"INFO"}, f"Connected: {welcome['server']} on {welcome['device']}")
        return {"FINISHED"}


class SPLATSMITH_OT_start_backend(bpy.types.Operator):
    bl_idname = "splatsmith.start_backend"
    bl_label = "Start Local Backend"
    bl_description = "Run the local backend command from the preferences on this machine and connect to it"

    address: bpy.props.StringProperty(name="Address", default="")
    command: bpy.props.StringProperty(name="Command", default="", description="Default: the preferences' command")
    timeout: bpy.props.FloatProperty(name="Timeout", default=120.0, min=1.0)
    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Block until the backend answers (scripts and background mode; "
                                             "in the UI the timer finishes the start)")

    def execute(self, context):
        if client_glue.session.starting is not None:
            return _fail(self, "Splatsmith: a local backend is already starting")
        try:
            client_glue.start_backend(self.address or None, self.command or None, self.timeout, wait=self.wait)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        if self.wait:
            self.report({"INFO"}, f"Splatsmith: backend started at {client_glue.session.address}")
        else:
            self.report({"INFO"}, "Splatsmith: starting the local backend; the panel connects when it answers")
        return {"FINISHED"}


class MethodRequest:
    """What the generate and refine operators share: the method, its preset and parameters
    (from the panel, or JSON from a script), the reference image's source, the seed."""

    pipeline: bpy.props.StringProperty(name="Method", default="dreamgaussian", description="The server's pipeline name")
    preset: bpy.props.StringProperty(name="Preset", default="default")
    params: bpy.props.StringProperty(name="Parameters", default="",
                                     description='The method\'s parameters as a JSON object, e.g. {"mode": "text", '
                                                 '"prompt": "a chair"} (see `splatsmith pipelines NAME`)')
    image_path: bpy.props.StringProperty(name="Image file", subtype="FILE_PATH", default="")
    image_name: bpy.props.StringProperty(name="Image in the .blend", default="")
    mask_path: bpy.props.StringProperty(name="Mask file", subtype="FILE_PATH", default="",
                                        description="The reference photo's foreground mask (white = object)")
    mask_name: bpy.props.StringProperty(name="Mask in the .blend", default="")
    references: bpy.props.StringProperty(
        name="Further views", default="",
        description='More images of the object as a JSON list, each {"image_path" or "image_name", optional '
                    '"mask_path"/"mask_name", "azimuth", "elevation"} (degrees; azimuth 90 is its left side)')
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    randomize_seed: bpy.props.BoolProperty(name="Random seed", default=False)
    wait: bpy.props.BoolProperty(name="Wait", default=False, description="Block until the job ends (scripts)")
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0, description="With wait: seconds (0: none)")

    def read_scene(self, context) -> dict:
        """Take the method, preset, seed, image and parameters from the panel; returns the
        parameters to submit."""
        s = context.scene.splatsmith
        self.pipeline, self.preset, self.seed, self.randomize_seed = s.pipeline, s.preset, s.seed, s.randomize_seed
        self.image_path = s.image_path if s.image_source == "FILE" else ""
        self.image_name = s.image.name if s.image_source == "BLEND" and s.image else ""
        self.mask_path = s.mask_path if s.image_source == "FILE" else ""
        self.mask_name = s.mask_image.name if s.image_source == "BLEND" and s.mask_image else ""
        self.references = json.dumps([ref.source_dict() for ref in s.references]) if len(s.references) else ""
        _, info = properties.selected(s)
        return params.collect(s, self.pipeline, info, self.preset) if info is not None else {}


    def method(self, context, from_scene: bool) -> tuple[dict, dict]:
        """Connect, then (description, request) of the job, its parameters from the panel when
        ``from_scene``; the image source is dropped when the method does not take an image
        with these parameters, and a random seed drawn when asked for.

        Raises:
            ClientError: not connected (explained), or ``bad_params``: an unknown method or
                parameters that are not a JSON object.
        """
        client_glue.ensure_connected()
        scene_params = self.read_scene(context) if from_scene else None
        if self.randomize_seed:
            self.seed = _random_seed()
            if from_scene:
                context.scene.splatsmith.seed = self.seed  # the artist sees the seed that was used
        described = properties.pipelines()
        info = described.get(self.pipeline)
        if info is None:
            raise ClientError("bad_params", f"the backend has no method {self.pipeline!r}; it has "
                                            f"{', '.join(described) or 'none'}")
        if scene_params is not None:
            chosen = scene_params
        else:
            try:
                chosen = json.loads(self.params or "{}")
            except json.JSONDecodeError as exc:
                raise ClientError("bad_params", f"'params' is not valid JSON ({exc})") from None
            if not isinstance(chosen, dict):
                raise ClientError("bad_params", "'params' must be a JSON object of parameter names and values")
        values = {**params.preset_values(info, self.preset), **chosen}
        if not params.input_applies(info, "image", values):
            self.image_path = self.image_name = ""
        if not params.input_applies(info, "mask", values) or not (self.image_path or self.image_name):
            self.mask_path = self.mask_name = ""
        references = []
        if self.references and "reference_views" in info.get("inputs", {}) and params.input_applies(
                info, "reference_views", values) and (self.image_path or self.image_name):
            try:
                references = json.loads(self.references)
            except json.JSONDecodeError as exc:
                raise ClientError("bad_params", f"'references' is not valid JSON ({exc})") from None
            if not isinstance(references, list) or not all(isinstance(r, dict) for r in references):
                raise ClientError("bad_params", "'references' must be a JSON list of objects")
        image_label = self.image_name or (os.path.splitext(os.path.basename(bpy.path.abspath(self.image_path)))[0]
                                          if self.image_path else "")
        return info, {"pipeline": self.pipeline, "preset": self.preset, "seed": self.seed, "params": chosen,
                      "label": params.label_for(info, values, image_label), "image_path": self.image_path,
                      "image_name": self.image_name, "mask_path": self.mask_path, "mask_name": self.mask_name,
                      **({"references": references} if references else {})}


class SPLATSMITH_OT_generate(MethodRequest, bpy.types.Operator):
    bl_idname = "splatsmith.generate"
    bl_label = "Generate"
    bl_description = "Generate a textured 3D asset with the chosen method (from a prompt and/or a reference image)"

    use_scene_settings: bpy.props.BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"},
                                               description="Read everything from the panel (scene.splatsmith)")

    def execute(self, context):
        try:
            _, request = self.method(context, self.use_scene_settings)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        return run_request(self, request, self.wait, self.timeout)


def _result_request(context) -> dict | None:
    obj = context.active_object
    if obj is None or "splatsmith_request" not in obj:
        return None
    request = json.loads(obj["splatsmith_request"])
    return request if "params" in request else None  # a fetched job's parameters are not known here


class _IterateBase:
    bl_options = {"REGISTER"}
    wait: bpy.props.BoolProperty(name="Wait", default=False)
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0)

    @classmethod
    def poll(cls, context):
        return _result_request(context) is not None

    def new_seed(self, request: dict) -> int:
        return request["seed"]

    def execute(self, context):
        request = _result_request(context)
        if request is None:
            return _fail(self, "Splatsmith: select a Splatsmith result (an object with a job's parameters)")
        request = dict(request, seed=self.new_seed(request))
        obj = context.active_object
        if obj.get("splatsmith_dreambooth_lora") and obj.get("splatsmith_job_id"):
            request["params"] = {**request["params"], "reuse_lora": obj["splatsmith_job_id"]}
        return run_request(self, request, self.wait, self.timeout)


class SPLATSMITH_OT_regenerate(_IterateBase, bpy.types.Operator):
    bl_idname = "splatsmith.regenerate"
    bl_label = "Regenerate"
    bl_description = "Run the selected result's job again with the same parameters and seed (a new version)"


class SPLATSMITH_OT_variation(_IterateBase, bpy.types.Operator):
    bl_idname = "splatsmith.variation"
    bl_label = "Variation"
    bl_description = "Run the selected result's job again with a new seed (a new version; the old one stays)"

    def new_seed(self, request: dict) -> int:
        return _random_seed(avoid=request["seed"])


class SPLATSMITH_OT_cancel(bpy.types.Operator):
    bl_idname = "splatsmith.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running Splatsmith job"

    job_id: bpy.props.StringProperty(name="Job", default="")

    def execute(self, context):
        session = client_glue.session
        targets = [s for s in session.jobs if not s.handle.finished and (not self.job_id or s.job_id == self.job_id)]
        if session.client is None or not targets:
            return _fail(self, "Splatsmith: no running job to cancel")
        try:
            for state in targets:
                if state.job_id:
                    session.client.cancel(state.handle)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        return {"FINISHED"}


class SPLATSMITH_OT_refresh_jobs(bpy.types.Operator):
    bl_idname = "splatsmith.refresh_jobs"
    bl_label = "Refresh"
    bl_description = "List the backend's jobs (queued, running, done, failed)"

    def execute(self, context):
        try:
            client_glue.refresh_jobs()
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        return {"FINISHED"}


class SPLATSMITH_OT_fetch_job(bpy.types.Operator):
    bl_idname = "splatsmith.fetch_job"
    bl_label = "Fetch"
    bl_description = "Bring a finished job's result into the scene"

    job_id: bpy.props.StringProperty(name="Job", default="")
    wait: bpy.props.BoolProperty(name="Wait", default=False)
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0)

    def execute(self, context):
        if not self.job_id:
            return _fail(self, "Splatsmith: give a job id")
        try:
            state = client_glue.follow(self.job_id)
            if self.wait:
                client_glue.wait(state, self.timeout or None)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {client_glue.explain(exc.code, exc.message)}")
        if self.wait and not state.result_object:
            return _fail(self, f"Splatsmith: job {self.job_id} {state.handle.state}: {state.message}")
        return {"FINISHED"}


class SPLATSMITH_OT_use_reference(bpy.types.Operator):
    bl_idname = "splatsmith.use_reference"
    bl_label = "Use This Image"
    bl_description = ("Go on from the reference image the last job drew: run the same method in image mode with it "
                      "(its background already removed)")

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"})
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0)

    @classmethod
    def poll(cls, context):
        return bool(client_glue.session.reference_image)

    def execute(self, context):
        session = client_glue.session
        image = bpy.data.images.get(session.reference_image)
        if image is None or not session.reference_request:
            return _fail(self, "Splatsmith: the reference image is no longer in this .blend; draw it again")
        if not image.get("splatsmith_masked", False):
            return _fail(self, f"Splatsmith: {image.name!r} still has its background (the backend has no background "
                               "remover): cut the object out to an RGBA image and pick it as the image in image mode")
        old = session.reference_request
        request = dict(old, params={**old.get("params", {}), "mode": "image", "reference_only": False},
                       image_name=image.name, image_path="", mask_path="", mask_name="", label=f"{old.get('label', 'reference')} (from image)")
        return run_request(self, request, self.wait, self.timeout)


class SPLATSMITH_OT_reference_add(bpy.types.Operator):
    bl_idname = "splatsmith.reference_add"
    bl_label = "Add View"
    bl_description = "Add another image of the object (its back, a side, the top), with the view it shows"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        refs = context.scene.splatsmith.references
        if len(refs) >= properties.MAX_FURTHER_REFERENCES:
            return _fail(self, f"Splatsmith: at most {MAX_REFERENCES} reference images (the front and "
                               f"{properties.MAX_FURTHER_REFERENCES} more)")
        taken = {ref.view for ref in refs}
        ref = refs.add()
        ref.view = next((item[0] for item in properties.VIEW_ITEMS if item[0] not in taken), "CUSTOM")
        ref.source = context.scene.splatsmith.image_source
        return {"FINISHED"}


class _OneFurtherView:
    """An operator on one of the panel's further views (``index``, from 0)."""

    bl_options = {"REGISTER", "UNDO"}
    index: bpy.props.IntProperty(name="View", default=0, min=0)

    def execute(self, context):
        refs = context.scene.splatsmith.references
        if self.index >= len(refs):
            return _fail(self, f"Splatsmith: there is no further view {self.index + 1}")
        return self.on(context, refs)


class SPLATSMITH_OT_reference_remove(_OneFurtherView, bpy.types.Operator):
    bl_idname = "splatsmith.reference_remove"
    bl_label = "Remove View"
    bl_description = "Remove this further view"

    def on(self, context, refs):
        refs.remove(self.index)
        return {"FINISHED"}


class SPLATSMITH_OT_reference_from_camera(_OneFurtherView, bpy.types.Operator):
    bl_idname = "splatsmith.reference_from_camera"
    bl_label = "From Active Camera"
    bl_description = ("Set this view's azimuth and elevation from the scene's active camera (or the selected camera), "
                      "placed where the photo was taken around the object, which faces -Y")

    def on(self, context, refs):
        active = context.active_object
        camera = active if active is not None and active.type == "CAMERA" else context.scene.camera
        if camera is None:
            return _fail(self, "Splatsmith: the scene has no active camera: add one where the photo was taken and make "
                               "it active (or select it)")
        try:
            azimuth, elevation = scene_io.orbit_angles_of_camera(camera.matrix_world)
        except ValueError as exc:
            return _fail(self, f"Splatsmith: {exc}")
        ref = refs[self.index]
        ref.view, ref.azimuth, ref.elevation = "CUSTOM", azimuth, elevation
        self.report({"INFO"}, f"Splatsmith: view {self.index + 1} from {camera.name}: azimuth {azimuth:g}, "
                              f"elevation {elevation:g}")
        return {"FINISHED"}


CLASSES = (SPLATSMITH_OT_connect, SPLATSMITH_OT_start_backend, SPLATSMITH_OT_generate, SPLATSMITH_OT_regenerate,
           SPLATSMITH_OT_variation, SPLATSMITH_OT_cancel, SPLATSMITH_OT_refresh_jobs, SPLATSMITH_OT_fetch_job,
           SPLATSMITH_OT_use_reference, SPLATSMITH_OT_reference_add, SPLATSMITH_OT_reference_remove,
           SPLATSMITH_OT_reference_from_camera)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
