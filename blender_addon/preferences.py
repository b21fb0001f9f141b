"""Add-on preferences: where the backend is, its keys, timeouts and the preview rate."""
import bpy

from shared_protocol.client import DEFAULT_ADDRESS


def addon_name() -> str:
    return __package__


class SplatsmithPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    address: bpy.props.StringProperty(name="Backend address", default=DEFAULT_ADDRESS,
                                      description="ZeroMQ address of `splatsmith serve`")
    server_key: bpy.props.StringProperty(name="Server public key", subtype="FILE_PATH",
                                         description="The backend's server.key (CURVE); empty for a loopback backend")
    client_key: bpy.props.StringProperty(name="Client secret key", subtype="FILE_PATH",
                                         description="This machine's .key_secret (CURVE)")
    start_command: bpy.props.StringProperty(
        name="Local backend command", default="splatsmith serve --device auto",
        description="What 'Start Local Backend' runs on this machine (the address is added as --bind); "
                    "use the full path of the splatsmith executable if it is not on PATH")
    ping_timeout: bpy.props.FloatProperty(name="Ping timeout (s)", default=1.0, min=0.1, max=60)
    submit_timeout: bpy.props.FloatProperty(name="Submit timeout (s)", default=10.0, min=1, max=600)
    transfer_timeout: bpy.props.FloatProperty(name="Transfer timeout (s)", default=120.0, min=1, max=3600)
    lost_timeout: bpy.props.FloatProperty(name="Backend lost after (s)", default=15.0, min=2, max=600,
                                          description="Silence while a job runs before it is reported as lost")
    preview_interval: bpy.props.FloatProperty(name="Preview interval (s)", default=0.5, min=0.05, max=10,
                                              description="Least time between two preview updates in the scene")

    def draw(self, context):
        layout = self.layout
        for name in ("address", "server_key", "client_key", "start_command", "ping_timeout", "submit_timeout",
                     "transfer_timeout", "lost_timeout", "preview_interval"):
            layout.prop(self, name)
        col = layout.column(align=True)
        col.label(text="Backend on another machine: run `splatsmith keygen` there, then")
        col.label(text="`splatsmith serve --bind tcp://0.0.0.0:5555 --curve-dir KEYS` and set its address and keys here.")


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_name())
    return addon.preferences if addon else None


def register():
    bpy.utils.register_class(SplatsmithPreferences)


def unregister():
    bpy.utils.unregister_class(SplatsmithPreferences)
