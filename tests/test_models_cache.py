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


def test_worker_keeps_models_between_jobs_and_release_frees_them(make_server, make_client):
    """The model cache lives in the worker process: a second job finds the model loaded; after
    ``release`` the next job loads it again."""
    server = make_server()
    client = make_client(server.endpoint)
    first = client.wait(client.submit("cached", params={"key": "tiny-sd"}), timeout=120)
    second = client.wait(client.submit("cached", params={"key": "tiny-sd"}), timeout=120)
    assert first["meta"]["loaded_now"] is True and second["meta"]["loaded_now"] is False
    assert first["meta"]["pid"] == second["meta"]["pid"] == server.executor.pid
    assert client.release(timeout=30) == ["tiny-sd"]
    third = client.wait(client.submit("cached", params={"key": "tiny-sd"}), timeout=120)
    assert third["meta"]["loaded_now"] is True


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


def test_release_and_other_keys_do_not_wait_for_a_load():
    import threading

    from backend.models import ModelCache

    cache = ModelCache(2)
    started, finish = threading.Event(), threading.Event()

    def slow():
        started.set()
        assert finish.wait(60)
        return "big model"

    loader = threading.Thread(target=cache.get, args=("big", slow))
    loader.start()
    assert started.wait(60)
    assert cache.release() == [] and cache.get("small", lambda: "small model") == "small model"  # no waiting
    assert cache.keys() == ["small"]
    finish.set()
    loader.join(60)
    assert cache.keys() == ["small", "big"] and cache.get("big", lambda: "again") == "big model"
