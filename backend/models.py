"""Model management: where weights live, which are present, and the in-memory LRU cache.

Weights are looked up in ``--models-dir`` (a folder of ``org/name`` sub-folders in diffusers'
``save_pretrained`` layout) and in the Hugging Face hub cache (``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``, folders ``models--org--name/snapshots/<rev>/``).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable


class ModelMissingError(RuntimeError):
    """A model's weights are not available locally (server code ``model_missing``).

    Attributes:
        model_id: the Hugging Face repo id, e.g. ``stabilityai/stable-diffusion-2-1-base``.
    """

    def __init__(self, model_id: str, detail: str = ""):
        self.model_id = model_id
        text = (
            f"model {model_id!r} is not available locally{': ' + detail if detail else ''}. "
            f"Download it on a machine with internet access with `splatsmith models download {model_id}` "
            "(or point --models-dir at a folder that holds it)."
        )
        super().__init__(text)


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

    Thread-safe. A loader is called at most once per key while the key is cached.

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
        self._on_evict = on_evict

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        """The model cached under ``key``, loading it with ``loader()`` when absent."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            model = loader()
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
