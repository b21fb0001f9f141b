"""Diffusion teachers behind one interface (:mod:`.base`): Stable Diffusion, Zero-1-to-3, the
oracle, and the tiny random-weight stand-ins, declared in :mod:`.registry`;
:func:`load_teacher` builds one by name. This package's ``__init__`` imports no torch."""


def ensure_teacher_model(kind: str, weights: str = "default", models_dir=None, model_id: str | None = None):
    """The local folder of a teacher's weights variant; a tiny (``splatsmith/``) model is
    written on first use with the teacher's tiny writer.

    Raises:
        ModelMissingError: the weights are not available locally. ValueError: unknown teacher.
    """
    from ..importing import load_reference
    from ..models import model_overrides, resolve_model, splatsmith_cache_dir
    from .registry import get_teacher

    spec = get_teacher(kind)
    mid = model_id or spec.model(weights)[0]
    writer = spec.variant_tiny_writers.get(weights, spec.tiny_writer)
    if mid.startswith("splatsmith/") and mid not in model_overrides() and writer:
        from .tiny import ensure_tiny

        ensure_tiny(mid, splatsmith_cache_dir(), load_reference(writer))
    return resolve_model(mid, models_dir, spec.former_ids.get(mid))


def load_estimator(kind: str, variant: str, device: str, *, models_dir=None, cache=None):
    """A registry model that is not a teacher (the depth or the intrinsics estimator), loaded with
    its registry ``loader`` in weights ``variant`` (cached as ``KIND:ID:DEVICE`` in ``cache``), or
    None when its weights are not present locally (its caller then goes on without it and says
    so). Raises ValueError for an unknown name."""
    from ..importing import load_reference
    from ..models import ModelMissingError
    from .registry import get_teacher

    spec = get_teacher(kind)
    model_id = spec.model(variant)[0]

    def load():
        return load_reference(spec.loader)(ensure_teacher_model(kind, variant, models_dir), model_id, device)

    try:
        return cache.get(f"{kind}:{model_id}:{device}", load) if cache is not None else load()
    except ModelMissingError:
        return None


def load_teacher(kind: str, preset: str = "default", device: str = "cpu", *, models_dir=None, cache=None,
                 oracle_mesh=None, guidance_scale: float | None = None, weighting: str = "sds", fp16: bool | None = None,
                 attention_slicing: bool = False, cpu_offload: bool = False,
                 model_id: str | None = None, oracle_modes: int = 1, oracle_sigma: float = 0.0):
    """Build a teacher by its registry name (``guidance.registry``).

    Args:
        kind: ``"stable-diffusion"``, ``"zero123"``, ``"oracle"`` or any registered teacher.
        preset: the weights variant (``tiny`` -> the tiny random models; zero123's ``stable``
            -> stable-zero123; an unknown variant -> the default model).
        models_dir: an extra folder of weights.
        cache: a ``backend.models.ModelCache``: loaded components are reused between jobs and
            evicted least-recently-used.
        oracle_mesh: the ground-truth GLB for ``kind="oracle"``.
        oracle_modes, oracle_sigma: the prior oracle's K and sigma (``guidance.oracle``; 1 and 0:
            the object exactly).
        guidance_scale: CFG scale (default: the teacher's ``default_cfg``).
        attention_slicing, cpu_offload: memory savers for small GPUs.
        model_id: override the model id.
    Raises:
        ModelMissingError: weights not available locally (the message names the model and the
            command that downloads it). ValueError: unknown kind, or an oracle without a mesh.
    """
    from ..importing import load_reference
    from .registry import get_teacher

    spec = get_teacher(kind)
    if kind == "oracle":
        if oracle_mesh is None:
            raise ValueError("the oracle teacher needs --oracle-mesh GT.glb")
        return load_reference(spec.guidance).from_glb(oracle_mesh, device, weighting=weighting, modes=oracle_modes,
                                                      sigma=oracle_sigma)
    mid = model_id or spec.model(preset)[0]
    key = f"{kind}:{mid}:{device}:{fp16}:{attention_slicing}:{cpu_offload}"

    companions = {name: get_teacher(name).model(preset)[0] for name in spec.companions}
    key += "".join(f":{cid}" for cid in companions.values())

    def load():
        folder = ensure_teacher_model(kind, preset, models_dir, mid)
        extra = {"companions": {name: (cid, ensure_teacher_model(name, preset, models_dir, cid))
                                for name, cid in companions.items()}} if companions else {}
        return load_reference(spec.loader)(folder, mid, device, fp16, attention_slicing, cpu_offload, **extra)

    parts = cache.get(key, load) if cache is not None else load()
    scale = spec.default_cfg if guidance_scale is None else guidance_scale
    return load_reference(spec.guidance)(parts, scale, weighting)


def load_job_teacher(params: dict, image_mode: bool, device: str, *, cache=None, models_dir=None,
                     kind: str | None = None):
    """The teacher a pipeline's parameters ask for (DreamGaussian's, texture refinement's and
    texture painting's).

    Reads ``params``: ``teacher`` (``"auto"``: ``kind`` when given, else Zero-1-to-3 when
    ``image_mode``, else Stable Diffusion; ``"oracle"``: the verification oracle from ``oracle_mesh``), ``weights``
    (``default``/``stable``/``tiny``; ``stable`` only exists for Zero-1-to-3, Stable Diffusion
    then uses ``default``) and ``guidance_scale`` (None: the teacher's default, 5 for
    Zero-1-to-3, 100 for Stable Diffusion, the public DreamGaussian configs); with the oracle,
    ``oracle_modes`` and ``oracle_sigma`` (the prior oracle, default 1 and 0). Raises as
    :func:`load_teacher`.
    """
    from .registry import get_teacher

    if params["teacher"] == "oracle":
        return load_teacher("oracle", device=device, oracle_mesh=params["oracle_mesh"],
                            oracle_modes=int(params.get("oracle_modes", 1)),
                            oracle_sigma=float(params.get("oracle_sigma", 0.0)))
    kind = kind or ("zero123" if image_mode else "stable-diffusion")
    scale = params["guidance_scale"] if params["guidance_scale"] is not None else get_teacher(kind).default_cfg
    weights = params["weights"] if params["weights"] in get_teacher(kind).variants else "default"
    teacher = load_teacher(kind, weights, device, cache=cache, guidance_scale=scale, models_dir=models_dir)
    if hasattr(teacher, "view_dependent"):
        teacher.view_dependent = bool(params.get("view_prompts", False))
    return teacher
