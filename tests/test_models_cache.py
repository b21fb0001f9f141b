"""The model cache: least-recently-used eviction and release through the server."""
from __future__ import annotations

import torch

from backend.models import ModelCache, ModelMissingError, find_model, models_present


def test_lru_eviction_and_loader_called_once():
    evicted, loads = [], []

    def loader(name):
        def load():
            loads.append(name)
            return torch.nn.Linear(4, 4)
        return load

    cache = ModelCache(capacity=2, on_evict=lambda k, m: evicted.append(k))
    a = cache.get("a", loader("a"))
    assert cache.get("a", loader("a")) is a and loads == ["a"]
    cache.get("b", loader("b"))
    cache.get("a", loader("a"))  # a is now the most recent
    cache.get("c", loader("c"))  # evicts b
    assert evicted == ["b"] and cache.keys() == ["a", "c"]
    assert cache.release() == ["a", "c"] and cache.keys() == [] and evicted == ["b", "a", "c"]


def test_release_through_the_server(make_server, make_client):
    server = make_server()
    server.models.get("tiny-sd", lambda: torch.nn.Linear(2, 2))
    client = make_client(server.endpoint)
    assert client.release() == ["tiny-sd"]
    assert server.models.keys() == []


def test_model_lookup_in_models_dir_and_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_model("org/model") is None
    local = tmp_path / "models" / "org" / "model"
    local.mkdir(parents=True)
    (local / "model_index.json").write_text("{}")
    assert find_model("org/model", tmp_path / "models") == local
    snap = tmp_path / "hub" / "models--org--other" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--other" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--other" / "refs" / "main").write_text("abc123")
    assert find_model("org/other") == snap
    assert models_present(["org/other", "org/model"]) == {"org/model": False, "org/other": True}
    text = str(ModelMissingError("org/model"))
    assert "splatsmith models download org/model" in text
