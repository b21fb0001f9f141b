"""Operators, usable from the panel, scripts and batch runs. With ``wait=True`` an operator
pumps the client itself until the job ends (timers do not run in background mode)."""
from __future__ import annotations

import os

import bpy

from shared_protocol.client import ClientError

from . import client_glue, scene_io


def _fail(op, message: str):
    op.report({"ERROR"}, message)
    client_glue.session.error = message
    return {"CANCELLED"}


class SPLATSMITH_OT_connect(bpy.types.Operator):
    bl_idname = "splatsmith.connect"
    bl_label = "Connect"
    bl_description = "Connect to the Splatsmith backend and read its capabilities"

    address: bpy.props.StringProperty(name="Address", default="")

    def execute(self, context):
        try:
            welcome = client_glue.connect(self.address or None)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        self.report({"INFO"}, f"Connected: {welcome['server']} on {welcome['device']}")
        return {"FINISHED"}


class SPLATSMITH_OT_generate(bpy.types.Operator):
    bl_idname = "splatsmith.generate"
    bl_label = "Generate"
    bl_description = "Generate a textured 3D asset from a prompt or a reference image"

    mode: bpy.props.EnumProperty(items=[("TEXT", "Text", ""), ("IMAGE", "Image", "")], default="TEXT")
    prompt: bpy.props.StringProperty(name="Prompt", default="")
    negative_prompt: bpy.props.StringProperty(name="Negative prompt", default="")
    image_path: bpy.props.StringProperty(name="Image", subtype="FILE_PATH", default="")
    pipeline: bpy.props.StringProperty(name="Pipeline", default="dreamgaussian")
    preset: bpy.props.StringProperty(name="Preset", default="default")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0)
    wait: bpy.props.BoolProperty(name="Wait", default=False, description="Block until the job ends (scripts)")
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0, description="With wait: seconds (0: none)")

    def execute(self, context):
        params = {"mode": self.mode.lower()}
        inputs = {}
        if self.mode == "TEXT":
            if not self.prompt.strip():
                return _fail(self, "Splatsmith: type a prompt first")
            params["prompt"] = self.prompt
            params["negative_prompt"] = self.negative_prompt
            label = self.prompt[:48]
        else:
            path = bpy.path.abspath(self.image_path)
            if not os.path.isfile(path):
                return _fail(self, f"Splatsmith: reference image {path!r} not found")
            inputs["image"] = scene_io.load_image_file(path)
            label = os.path.splitext(os.path.basename(path))[0]
        try:
            state = client_glue.submit(self.pipeline, params, inputs, self.preset, self.seed, label)
            if self.wait:
                client_glue.wait(state, self.timeout or None)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        if self.wait and state.handle.state != "done":
            return _fail(self, f"Splatsmith: job {state.handle.state}: {state.message or state.handle.error['message']}")
        self.report({"INFO"}, f"Splatsmith: {'created ' + state.result_object if self.wait else 'job submitted'}")
        return {"FINISHED"}


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
            return _fail(self, f"Splatsmith: {exc.message}")
        if self.wait and state.handle.state != "done":
            return _fail(self, f"Splatsmith: job {state.handle.state}: {state.handle.error['message']}")
        return {"FINISHED"}


CLASSES = (SPLATSMITH_OT_connect, SPLATSMITH_OT_generate, SPLATSMITH_OT_cancel, SPLATSMITH_OT_fetch_job)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
