"""The "Splatsmith" tab in the 3D Viewport's sidebar: connection, the method chosen from the
server's list with its parameters (drawn from the server's description), progress, the job
list and iteration on a selected result."""
import bpy

from . import client_glue, params, properties

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

        obj = context.active_object
        draw_method(layout.column(), settings, obj)

        row = layout.row(align=True)
        row.enabled = obj is not None and "splatsmith_request" in obj
        row.operator("splatsmith.regenerate", icon="FILE_REFRESH")
        row.operator("splatsmith.variation", icon="MOD_NOISE")


def draw_image_picker(layout, data, from_file: bool, names: tuple[str, str, str, str], masked: bool) -> None:
    """An image and (``masked``) its mask: the file paths when ``from_file``, else images of the
    .blend. ``names``: ``data``'s (path, mask path, image, mask image) properties."""
    path, mask_path, image, mask_image = names
    if from_file:
        layout.prop(data, path)
        if masked:
            layout.prop(data, mask_path)
    else:
        layout.template_ID(data, image, open="image.open")
        if masked:
            layout.template_ID(data, mask_image, open="image.open")


def draw_further_views(col, settings, masked: bool) -> None:
    """The further reference images (the main image is the front): each with its source, mask,
    the view it shows (a named view, or azimuth and elevation, which "From active camera" fills),
    and a button that removes it; then "Add View" while fewer than the most are given."""
    col.label(text="The image above is the front; more views of the object:" if len(settings.references) else
              "More images of the object (back, sides, top):", icon="IMAGE_DATA")
    for index, ref in enumerate(settings.references):
        box = col.box()
        row = box.row(align=True)
        row.prop(ref, "source", expand=True)
        row.operator("splatsmith.reference_remove", text="", icon="X").index = index
        draw_image_picker(box, ref, ref.source == "FILE", ("path", "mask_path", "image", "mask_image"), masked)
        box.prop(ref, "view")
        if ref.view == "CUSTOM":
            row = box.row(align=True)
            row.prop(ref, "azimuth")
            row.prop(ref, "elevation")
        box.operator("splatsmith.reference_from_camera", icon="CAMERA_DATA").index = index
    row = col.row()
    row.enabled = len(settings.references) < properties.MAX_FURTHER_REFERENCES
    row.operator("splatsmith.reference_add", icon="ADD")


def draw_method(col, settings, obj) -> None:
    """The selected method: preset, its inputs, its basic parameters, the seed, its advanced
    parameters by group, and the button that runs it (what it works on decides which)."""
    col.prop(settings, "pipeline")
    name, info = properties.selected(settings)
    if info is None:
        col.label(text="Connect to a backend to choose a method", icon="INFO")
        return
    if name in properties.TEXTURING_PIPELINES.values() and obj is not None and obj.type == "MESH":
        col.row().prop(settings, "texturing", expand=True)  # paint a new texture, or refine the one it has
    col.prop(settings, "preset")
    values = params.panel_values(settings, name, info)
    if any(v is None for v in values.values()):
        col.label(text="Reconnect to load this method's parameters", icon="ERROR")
    works_on = info.get("works_on", ())
    if "image" in works_on and params.input_applies(info, "image", values):
        col.prop(settings, "image_source", expand=True)
        masked = params.input_applies(info, "mask", values)
        draw_image_picker(col, settings, settings.image_source == "FILE",
                          ("image_path", "mask_path", "image", "mask_image"), masked)
        if masked:
            col.label(text="A photo without transparency needs a mask (white = object)", icon="INFO")
        if "reference_views" in info.get("inputs", {}) and params.input_applies(info, "reference_views", values):
            draw_further_views(col, settings, masked)
    draw_rows(col, settings, params.rows(settings, name, info, settings.preset, advanced=False))
    row = col.row(align=True)
    row.prop(settings, "seed")
    row.prop(settings, "randomize_seed", toggle=True, icon="FILE_REFRESH", text="")
    if "mesh" in works_on:
        col.prop(settings, "reference_view")
        col.prop(settings, "update_in_place")
    col.prop(settings, "show_advanced", icon="TRIA_DOWN" if settings.show_advanced else "TRIA_RIGHT", emboss=False)
    if settings.show_advanced:
        draw_rows(col.box(), settings, params.rows(settings, name, info, settings.preset, advanced=True), by_group=True)

    active = client_glue.active_job()
    if active is not None:
        factor, text = client_glue.format_progress(active)
        col.progress(factor=factor, type="BAR", text=f"{active.label[:20]}: {text}")
        col.operator("splatsmith.cancel", icon="CANCEL").job_id = active.job_id or ""
    elif "posed_images" in works_on:
        col.label(text="Takes posed images: run it from a script or", icon="INFO")
        col.label(text=f"splatsmith generate --pipeline {name}", icon="BLANK1")
    elif "mesh" in works_on:
        sub = col.row()
        sub.enabled = obj is not None and obj.type == "MESH"
        sub.operator("splatsmith.refine_texture", icon="BRUSH_DATA",
                     text=f"Run on {obj.name}" if sub.enabled else "Select a mesh").use_scene_settings = True
    else:
        col.operator("splatsmith.generate", icon="PLAY").use_scene_settings = True
        if "reference_only" in info.get("params", {}) and client_glue.session.reference_image:
            row = col.row(align=True)
            row.label(text=client_glue.session.reference_image, icon="IMAGE_DATA")
            row.operator("splatsmith.use_reference", icon="CHECKMARK")


def draw_rows(layout, settings, rows: list, by_group: bool = False) -> None:
    """Draw parameter rows (:func:`.params.rows`); ``by_group`` puts them under group headings."""
    if by_group:
        order = list(dict.fromkeys(r.group for r in rows))
        rows = sorted(rows, key=lambda r: order.index(r.group))
    group = None
    for r in rows:
        if by_group and r.group != group:
            group = r.group
            layout.label(text=params.label_text(group))
        if r.set_path:
            line = layout.row(align=True)
            line.prop(settings, r.set_path, text="")
            if r.is_set:
                line.prop(settings, r.path, text=r.label)
            else:
                line.label(text=f"{r.label}: {r.hint}")
        elif r.expand:
            line = layout.row(align=True)
            line.label(text=r.label)
            line.prop(settings, r.path, expand=True)
        else:
            layout.prop(settings, r.path, text=r.label)
        if r.note:
            layout.label(text=r.note, icon="INFO")


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
