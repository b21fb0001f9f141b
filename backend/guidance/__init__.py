"""Diffusion teachers behind one interface (:mod:`.base`): Stable Diffusion, Zero-1-to-3, the
oracle, and the tiny random-weight stand-ins; :func:`load_guidance` builds them by name."""


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and warnings (jobs report progress themselves)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_teacher(kind: str, preset: str = "default", device: str = "cpu", *, models_dir=None, cache=None,
                 oracle_mesh=None, guidance_scale: float | None = None, weighting: str = "sds", fp16: bool | None = None,
                 attention_slicing: bool = False, cpu_offload: bool = False,
                 model_id: str | None = None):
    """Build a teacher by name.

    Args:
        kind: ``"stable-diffusion"``, ``"zero123"`` or ``"oracle"``.
        preset: selects the weights (``tiny`` -> the tiny random models; zero123's ``stable``
            -> stable-zero123; anything else -> the default model); see ``backend.models``.
        models_dir: an extra folder of weights.
        cache: a ``backend.models.ModelCache``: loaded components are reused between jobs and
            evicted least-recently-used.
        oracle_mesh: the ground-truth GLB for ``kind="oracle"``.
        guidance_scale: CFG scale (default: 100 for Stable Diffusion, 5 for Zero-1-to-3).
        attention_slicing, cpu_offload: memory savers for small GPUs.
        model_id: override the model id.
    Raises:
        ModelMissingError: weights not available locally (the message names the model and the
            command that downloads it). ValueError: unknown kind, or an oracle without a mesh.
    """
    from ..models import model_id_for, resolve_model

    if kind == "oracle":
        if oracle_mesh is None:
            raise ValueError("the oracle teacher needs --oracle-mesh GT.glb")
        from .oracle import OracleGuidance

        return OracleGuidance.from_glb(oracle_mesh, device, weighting=weighting)
    if kind not in ("stable-diffusion", "zero123"):
        raise ValueError(f"unknown teacher {kind!r}; use stable-diffusion, zero123 or oracle")
    mid = model_id or model_id_for(kind, preset)[0]
    key = f"{kind}:{mid}:{device}:{fp16}:{attention_slicing}:{cpu_offload}"

    def load():
        folder = resolve_model(mid, models_dir)
        if kind == "stable-diffusion":
            from .stable_diffusion import load_stable_diffusion

            return load_stable_diffusion(folder, mid, device, fp16, attention_slicing, cpu_offload)
        from .zero123 import load_zero123

        return load_zero123(folder, mid, device, fp16, attention_slicing, cpu_offload)

    parts = cache.get(key, load) if cache is not None else load()
    if kind == "stable-diffusion":
        from .stable_diffusion import StableDiffusionGuidance

        return StableDiffusionGuidance(parts, 100.0 if guidance_scale is None else guidance_scale, weighting)
    from .zero123 import Zero123Guidance

    return Zero123Guidance(parts, 5.0 if guidance_scale is None else guidance_scale, weighting)


def load_job_teacher(params: dict, image_mode: bool, device: str, *, cache=None, models_dir=None):
    """The teacher a pipeline's parameters ask for (DreamGaussian's and texture refinement's).

    Reads ``params``: ``teacher`` (``"auto"``: Zero-1-to-3 when ``image_mode``, else Stable
    Diffusion; ``"oracle"``: the verification oracle from ``oracle_mesh``), ``weights``
    (``default``/``stable``/``tiny``; ``stable`` only exists for Zero-1-to-3, Stable Diffusion
    then uses ``default``) and ``guidance_scale`` (< 0: 5 with an image, 100 with text, the
    public DreamGaussian configs). Raises as :func:`load_teacher`.
    """
    if params["teacher"] == "oracle":
        return load_teacher("oracle", device=device, oracle_mesh=params["oracle_mesh"])
    kind = "zero123" if image_mode else "stable-diffusion"
    scale = params["guidance_scale"] if params["guidance_scale"] >= 0 else (5.0 if image_mode else 100.0)
    weights = params["weights"] if (params["weights"] != "stable" or kind == "zero123") else "default"
    return load_teacher(kind, weights, device, cache=cache, guidance_scale=scale, models_dir=models_dir)
