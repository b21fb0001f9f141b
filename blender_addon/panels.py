"""The "Splatsmith" tab in the 3D Viewport's sidebar: connection, Generate, progress, the job
list, iteration on a selected result, and Refine Texture."""
import bpy

from . import client_glue

_STATE_ICONS = {"queued": "SORTTIME", "running": "PLAY", "done": "CHECKMARK", "failed": "ERROR",
                "cancelled": "CANCEL", "interrupted": "ERROR"}


class VIEW3D_PT_splatsmith(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Splatsmith"
    bl_label = "Splatsmith"

    def draw(self, context):
        layout = self.layout
        session = client_glue.session
        settings = context.scene.splatsmith

        box = layout.box()
        welcome = session.welcome
        if welcome:
            box.label(text=f"{welcome['server']} on {welcome['device']}", icon="CHECKMARK")
            models = welcome.get("models", {})
            if models:
                box.label(text=f"models present: {sum(bool(v) for v in models.values())}/{len(models)}")
        elif session.starting is not None:
            box.label(text="Starting the local backend…", icon="SORTTIME")
        else:
            box.label(text="Not connected", icon="UNLINKED")
        if session.error:
            for k in range(0, min(len(session.error), 240), 60):
                box.label(text=session.error[k:k + 60], icon="ERROR" if k == 0 else "BLANK1")
        row = box.row()
        row.operator("splatsmith.connect", icon="LINKED")
        if not welcome and session.starting is None:
            row.operator("splatsmith.start_backend", icon="CONSOLE")

        col = layout.column()
        col.prop(settings, "mode", expand=True)
        if settings.mode == "TEXT":
            col.prop(settings, "prompt")
            col.prop(settings, "negative_prompt")
        else:
            col.prop(settings, "image_source", expand=True)
            if settings.image_source == "FILE":
                col.prop(settings, "image_path")
            else:
                col.template_ID(settings, "image", open="image.open")
            col.prop(settings, "prompt", text="Context")
        col.prop(settings, "pipeline")
        col.prop(settings, "preset")
        row = col.row(align=True)
        row.prop(settings, "seed")
        row.prop(settings, "randomize_seed", toggle=True, icon="FILE_REFRESH", text="")
        col.prop(settings, "show_advanced", icon="TRIA_DOWN" if settings.show_advanced else "TRIA_RIGHT", emboss=False)
        if settings.show_advanced:
            sub = col.box()
            sub.prop(settings, "steps")
            sub.prop(settings, "guidance_scale")
            sub.prop(settings, "texture_size")

        active = client_glue.active_job()
        if active is None:
            col.operator("splatsmith.generate", icon="PLAY").use_scene_settings = True
        else:
            factor, text = client_glue.format_progress(active)
            col.progress(factor=factor, type="BAR", text=f"{active.label[:20]}: {text}")
            col.operator("splatsmith.cancel", icon="CANCEL").job_id = active.job_id or ""

        obj = context.active_object
        row = layout.row(align=True)
        row.enabled = obj is not None and "splatsmith_request" in obj
        row.operator("splatsmith.regenerate", icon="FILE_REFRESH")
        row.operator("splatsmith.variation", icon="MOD_NOISE")

        box = layout.box()
        box.label(text="Refine Texture", icon="TEXTURE")
        box.enabled = obj is not None and obj.type == "MESH"
        box.prop(settings, "use_existing_texture")
        box.prop(settings, "update_in_place")
        box.label(text="Uses the prompt and/or image above", icon="INFO")
        box.operator("splatsmith.refine_texture", icon="BRUSH_DATA").use_scene_settings = True


class VIEW3D_PT_splatsmith_jobs(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Splatsmith"
    bl_label = "Jobs"
    bl_parent_id = "VIEW3D_PT_splatsmith"

    def draw(self, context):
        layout = self.layout
        session = client_glue.session
        layout.operator("splatsmith.refresh_jobs", icon="FILE_REFRESH")
        followed = {s.job_id: s for s in session.jobs}
        for info in reversed(session.server_jobs[-12:]):
            state = followed.get(info["job_id"])
            current = state.handle.state if state is not None else info["state"]
            row = layout.row(align=True)
            row.label(text=f"{(info.get('label') or info['job_id'])[:22]}: {current}", icon=_STATE_ICONS.get(current, "DOT"))
            if current == "done" and (state is None or not state.result_object):
                row.operator("splatsmith.fetch_job", text="Fetch").job_id = info["job_id"]
            elif current in ("failed", "interrupted") and info.get("error_message"):
                row.label(text=info["error_message"][:40])
        for state in session.jobs:
            if state.message and state.job_id not in {j["job_id"] for j in session.server_jobs}:
                layout.label(text=f"{state.label[:22]}: {state.message[:60]}", icon="ERROR")


CLASSES = (VIEW3D_PT_splatsmith, VIEW3D_PT_splatsmith_jobs)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
