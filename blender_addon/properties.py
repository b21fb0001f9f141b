"""The panel's settings, stored per scene (``scene.splatsmith``) and saved with the .blend.

The method list, its presets and its parameters come from the connected server's welcome: the
fixed properties here are only what is the add-on's own (where the reference image comes
from, the seed, how a texture result lands on an object). Parameter values are ID properties
of the same settings, managed by :mod:`.params`."""
import bpy

from shared_protocol.views import AZIMUTH_RANGE, ELEVATION_RANGE, MAX_REFERENCES, NAMED_VIEW_HELP, NAMED_VIEWS

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


#: The views a further reference image can be given as: the named ones (``shared_protocol.views``)
#: but the front (the main image is the front), or an azimuth and elevation.
VIEW_ITEMS = [(name.upper(), name.capitalize(), NAMED_VIEW_HELP[name]) for name in NAMED_VIEWS if name != "front"] + [
    ("CUSTOM", "Azimuth / elevation", "the orbit angles below, degrees (\"From active camera\" fills them)")]


class SplatsmithReference(bpy.types.PropertyGroup):
    """A further reference image of the object (a view besides the front), with the view it shows."""

    source: bpy.props.EnumProperty(name="Image from", items=[("FILE", "File", "an image file on disk"),
                                                             ("BLEND", "Blend", "an image already in this .blend")])
    path: bpy.props.StringProperty(name="Image", subtype="FILE_PATH",
                                   description="Another view of the object: RGBA whose alpha is the object")
    image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image, description="Another view in this .blend")
    mask_path: bpy.props.StringProperty(name="Mask", subtype="FILE_PATH",
                                        description="Foreground mask of an RGB photo: white where the object is")
    mask_image: bpy.props.PointerProperty(name="Mask", type=bpy.types.Image,
                                          description="Foreground mask in this .blend: white where the object is")
    view: bpy.props.EnumProperty(name="View", items=VIEW_ITEMS, default="BACK",
                                 description="Which side of the object the image shows")
    azimuth: bpy.props.FloatProperty(name="Azimuth", default=180.0, min=AZIMUTH_RANGE[0], max=AZIMUTH_RANGE[1],
                                     description="Degrees around the object from its front; 90 shows its left side")
    elevation: bpy.props.FloatProperty(name="Elevation", default=0.0, min=ELEVATION_RANGE[0], max=ELEVATION_RANGE[1],
                                       description="Degrees above the object's middle (negative: from below)")

    def angles(self) -> tuple[float, float]:
        """(azimuth, elevation) in degrees of the view this image shows."""
        if self.view == "CUSTOM":
            return float(self.azimuth), float(self.elevation)
        azimuth, elevation = NAMED_VIEWS[self.view.lower()]
        return azimuth, 0.0 if elevation is None else elevation

    def source_dict(self) -> dict:
        """Where the image and its mask come from, and its view: one entry of a request's
        ``references`` (what Regenerate and Variation send again)."""
        azimuth, elevation = self.angles()
        blend = self.source == "BLEND"
        return {"image_path": "" if blend else self.path, "image_name": self.image.name if blend and self.image else "",
                "mask_path": "" if blend else self.mask_path,
                "mask_name": self.mask_image.name if blend and self.mask_image else "",
                "azimuth": azimuth, "elevation": elevation}


#: Further reference images the panel takes besides the front.
MAX_FURTHER_REFERENCES = MAX_REFERENCES - 1


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
    references: bpy.props.CollectionProperty(type=SplatsmithReference, name="Further views",
                                             description="More images of the object, each with the view it shows")
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
    bpy.utils.register_class(SplatsmithReference)
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
    bpy.utils.unregister_class(SplatsmithReference)
