"""The panel's settings, stored per scene (``scene.splatsmith``) and saved with the .blend.

The method list, its presets and its parameters come from the connected server's welcome: the
fixed properties here are only what is the add-on's own (where the reference image comes
from, the seed, how a texture result lands on an object). Parameter values are ID properties
of the same settings, managed by :mod:`.params`."""
import bpy

from . import client_glue, params

_items_cache: dict[str, list] = {}  # Blender needs the enum item strings kept alive
_NO_SERVER = [("", "(connect first)", "connect to a backend to list its methods")]


def pipelines() -> dict:
    """The connected server's pipelines (name -> description), {} when not connected."""
    return (client_glue.session.welcome or {}).get("pipelines") or {}


def selected(settings) -> tuple[str, dict | None]:
    """(name, description) of the pipeline chosen in the panel (description None when the
    server does not have it or there is no server)."""
    name = settings.pipeline
    return name, pipelines().get(name)


def _pipeline_items(self, context):
    items = [(name, info.get("title", name), ", ".join(info.get("works_on", ())) or name)
             for name, info in pipelines().items()]
    _items_cache["pipelines"] = items or _NO_SERVER
    return _items_cache["pipelines"]


def _preset_items(self, context):
    info = pipelines().get(self.pipeline) or {}
    items = [(name, name, ", ".join(f"{k}={v}" for k, v in list(values.items())[:4]) or "the method's published settings")
             for name, values in info.get("presets", {"default": {}}).items()]
    _items_cache["presets"] = items
    return items


def _on_preset(self, context):
    """Choosing a preset puts the method's values back to the preset's."""
    name, info = selected(self)
    if info is not None:
        params.sync(self, {name: info}, reset=(name, self.preset))


def _on_pipeline(self, context):
    name, info = selected(self)
    if info is not None:
        params.sync(self, {name: info})


#: The texturing choice on a selected mesh -> the server's pipeline that does it.
TEXTURING_PIPELINES = {"PAINT": "texture_paint", "REFINE": "texture_refine"}
TEXTURING_ITEMS = [("PAINT", "Paint a new texture", "A new texture from the prompt: depth-conditioned views painted "
                    "together through the object's own UVs (texture_paint)"),
                   ("REFINE", "Refine the existing texture", "Improve the object's texture, or one baked from a reference "
                    "image (texture_refine)")]


def _on_texturing(self, context):
    """Choosing Paint or Refine selects the method that does it (when the server has it)."""
    name = TEXTURING_PIPELINES[self.texturing]
    if name in pipelines() and self.pipeline != name:
        self.pipeline = name


class SplatsmithSettings(bpy.types.PropertyGroup):
    pipeline: bpy.props.EnumProperty(name="Method", items=_pipeline_items, update=_on_pipeline,
                                     description="The generation method (the server's pipelines)")
    preset: bpy.props.EnumProperty(name="Preset", items=_preset_items, update=_on_preset,
                                   description="Choosing a preset sets the method's parameters to its values")
    image_source: bpy.props.EnumProperty(name="Image from", items=[("FILE", "File", "an image file on disk"),
                                                                   ("BLEND", "Blend", "an image already in this .blend")])
    image_path: bpy.props.StringProperty(name="Image", subtype="FILE_PATH",
                                         description="Reference image: RGBA whose alpha is the object")
    image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image, description="Reference image in this .blend")
    mask_path: bpy.props.StringProperty(name="Mask", subtype="FILE_PATH",
                                        description="Foreground mask of an ordinary (RGB) photo: white where the "
                                                    "object is, the photo's size (not needed for RGBA images)")
    mask_image: bpy.props.PointerProperty(name="Mask", type=bpy.types.Image,
                                          description="Foreground mask in this .blend: white where the object is")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    randomize_seed: bpy.props.BoolProperty(name="Randomise", default=False, description="A new seed for every job")
    show_advanced: bpy.props.BoolProperty(name="Advanced", default=False)
    reference_view: bpy.props.EnumProperty(name="Reference view", default="CAMERA", items=[
        ("CAMERA", "Camera", "the reference image was taken from the scene's active camera"),
        ("VIEWPORT", "Viewport", "the reference image matches the current 3D viewport"),
        ("FRONT", "Front", "in front of the object (-Y), the backend's default")],
        description="Where the reference image was seen from (methods that work on a selected mesh)")
    texturing: bpy.props.EnumProperty(name="Texturing", items=TEXTURING_ITEMS, default="REFINE", update=_on_texturing,
                                      description="What to do to the selected object's texture")
    update_in_place: bpy.props.BoolProperty(name="Update the image in place", default=False,
                                            description="Write into the object's existing image node instead of a new material slot")


def sync_scenes() -> None:
    """Give every scene's settings the connected server's parameters (after a connect, or when
    a .blend is loaded while connected)."""
    described = pipelines()
    if not described:
        return
    for scene in bpy.data.scenes:
        settings = scene.splatsmith
        params.sync(settings, described)
        if settings.pipeline not in described:
            # Blender keeps an enum's stored index: after a server change it may point at another method.
            settings.pipeline = next(iter(described))


@bpy.app.handlers.persistent
def _on_load(*_args) -> None:
    sync_scenes()


def register():
    bpy.utils.register_class(SplatsmithSettings)
    bpy.types.Scene.splatsmith = bpy.props.PointerProperty(type=SplatsmithSettings)
    bpy.app.handlers.load_post.append(_on_load)
    client_glue.on_welcome.append(sync_scenes)


def unregister():
    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    if sync_scenes in client_glue.on_welcome:
        client_glue.on_welcome.remove(sync_scenes)
    del bpy.types.Scene.splatsmith
    bpy.utils.unregister_class(SplatsmithSettings)
