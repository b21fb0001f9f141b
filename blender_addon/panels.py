"""The "Splatsmith" tab in the 3D Viewport's sidebar."""
import bpy

from . import client_glue


class VIEW3D_PT_splatsmith(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Splatsmith"
    bl_label = "Splatsmith"

    def draw(self, context):
        layout = self.layout
        session = client_glue.session
        box = layout.box()
        if session.welcome:
            box.label(text=f"{session.welcome['server']} - {session.welcome['device']}", icon="CHECKMARK")
        else:
            box.label(text="Not connected", icon="UNLINKED")
        if session.error:
            box.label(text=session.error[:120], icon="ERROR")
        box.operator("splatsmith.connect")
        running = [s for s in session.jobs if not s.handle.finished]
        for state in session.jobs[-8:]:
            row = layout.row()
            progress = state.handle.progress
            text = f"{state.label[:24]}: {state.handle.state}"
            if progress and not state.handle.finished:
                text += f" {progress['stage']} {progress['step']}/{progress['total']}"
            row.label(text=text)
        if running:
            layout.operator("splatsmith.cancel")


def register():
    bpy.utils.register_class(VIEW3D_PT_splatsmith)


def unregister():
    bpy.utils.unregister_class(VIEW3D_PT_splatsmith)
