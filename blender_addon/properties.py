"""The panel's settings, stored per scene (``scene.splatsmith``), so a prompt and its seed are
saved with the .blend. Pipeline and preset lists come from the connected server's welcome."""
import bpy

from . import client_glue

_FALLBACK_PIPELINES = {"dreamgaussian": {"title": "DreamGaussian", "presets": {"default": {}, "fast": {}, "tiny": {}}}}
_items_cache: dict[str, list] = {}  # Blender needs the enum item strings kept alive


def pipelines() -> dict:
    welcome = client_glue.session.welcome
    return (welcome or {}).get("pipelines") or _FALLBACK_PIPELINES


def _pipeline_items(self, context):
    # Generation methods; those that work on a selected mesh (Refine Texture) or on posed images
    # have their own entry points. What a method works on comes from the server's description.
    items = [(name, info.get("title", name), f"the {name} pipeline") for name, info in pipelines().items()
             if not {"mesh", "posed_images"} & set(info.get("works_on", ()))]
    _items_cache["pipelines"] = items or [("dreamgaussian", "DreamGaussian", "")]
    return _items_cache["pipelines"]


def _preset_items(self, context):
    info = pipelines().get(self.pipeline) or next(iter(pipelines().values()))
    items = [(name, name, ", ".join(f"{k}={v}" for k, v in list(values.items())[:4]) or "the paper's settings")
             for name, values in info.get("presets", {"default": {}}).items()]
    _items_cache["presets"] = items
    return items


class SplatsmithSettings(bpy.types.PropertyGroup):
    mode: bpy.props.EnumProperty(name="Mode", items=[("TEXT", "Text", "text-to-3D"), ("IMAGE", "Image", "image-to-3D")])
    prompt: bpy.props.StringProperty(name="Prompt", description="What to generate (text mode)")
    negative_prompt: bpy.props.StringProperty(name="Negative", description="What the teacher should avoid")
    image_source: bpy.props.EnumProperty(name="Image from", items=[("FILE", "File", "an image file on disk"),
                                                                   ("BLEND", "Blend", "an image already in this .blend")])
    image_path: bpy.props.StringProperty(name="Image", subtype="FILE_PATH",
                                         description="Reference image: RGBA whose alpha is the object")
    image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image, description="Reference image in this .blend")
    pipeline: bpy.props.EnumProperty(name="Pipeline", items=_pipeline_items)
    preset: bpy.props.EnumProperty(name="Preset", items=_preset_items)
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    randomize_seed: bpy.props.BoolProperty(name="Randomise", default=False, description="A new seed for every job")
    show_advanced: bpy.props.BoolProperty(name="Advanced", default=False)
    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, max=100_000, description="Optimisation steps (0: preset)")
    guidance_scale: bpy.props.FloatProperty(name="Guidance scale", default=0.0, min=0.0, max=1000.0,
                                            description="Classifier-free guidance scale (0: preset)")
    texture_size: bpy.props.EnumProperty(name="Texture", items=[("0", "Preset", "the preset's texture size"),
                                                                ("512", "512", ""), ("1024", "1024", ""),
                                                                ("2048", "2048", ""), ("4096", "4096", "")])
    use_existing_texture: bpy.props.BoolProperty(name="Start from the existing texture", default=True)
    update_in_place: bpy.props.BoolProperty(name="Update the image in place", default=False,
                                            description="Write into the object's existing image node instead of a new material slot")


def register():
    bpy.utils.register_class(SplatsmithSettings)
    bpy.types.Scene.splatsmith = bpy.props.PointerProperty(type=SplatsmithSettings)


def unregister():
    del bpy.types.Scene.splatsmith
    bpy.utils.unregister_class(SplatsmithSettings)
