"""The add-on's side of the wire: one client, the jobs it follows, and the pump that applies
their previews and results to the scene on Blender's main thread.

``pump`` does bounded work (one poll, at most one scene update per job and kind) and is called
by a ``bpy.app.timers`` tick; operators with ``wait=True`` call it themselves, because timers do
not run in background mode or with bpy as a module.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import bpy
import numpy as np

from shared_protocol.client import Client, ClientError, JobHandle, Timeouts, load_curve_keys

from . import preferences, scene_io

TICK_S = 0.1


@dataclass
class JobState:
    handle: JobHandle
    params: dict
    label: str
    preview_name: str = ""
    applied: dict[str, int] = field(default_factory=dict)  # kind -> last applied seq
    last_update: float = 0.0
    result_object: str = ""
    message: str = ""

    @property
    def job_id(self) -> str | None:
        return self.handle.job_id


class Session:
    def __init__(self) -> None:
        self.client: Client | None = None
        self.address = ""
        self.welcome: dict | None = None
        self.jobs: list[JobState] = []
        self.error = ""


session = Session()


def _settings():
    prefs = preferences.get()
    if prefs is None:  # not enabled through the preferences (scripts, tests): defaults
        from types import SimpleNamespace

        from shared_protocol.client import DEFAULT_ADDRESS

        return SimpleNamespace(address=DEFAULT_ADDRESS, server_key="", client_key="", ping_timeout=1.0,
                               submit_timeout=10.0, transfer_timeout=120.0, preview_interval=0.5)
    return prefs


def connect(address: str | None = None) -> dict:
    """(Re)connect and handshake; returns the welcome. Raises ClientError with a clear message."""
    prefs = _settings()
    address = address or prefs.address
    if session.client is not None:
        session.client.close()
        session.client = None
    timeouts = Timeouts(ping=prefs.ping_timeout, submit=prefs.submit_timeout, transfer=prefs.transfer_timeout)
    client = Client(address, timeouts=timeouts, curve=load_curve_keys(prefs.server_key or None, prefs.client_key or None),
                    name=f"blender {bpy.app.version_string}")
    try:
        session.welcome = client.hello()
    except ClientError as exc:
        client.close()
        session.error = exc.message
        raise
    session.client, session.address, session.error = client, address, ""
    return session.welcome


def ensure_connected() -> Client:
    if session.client is None:
        connect()
    return session.client


def submit(pipeline: str, params: dict, inputs: dict, preset: str, seed: int, label: str) -> JobState:
    client = ensure_connected()
    handle = client.submit(pipeline, params=params, inputs=inputs, preset=preset, seed=seed, label=label)
    state = JobState(handle, {"pipeline": pipeline, "preset": preset, "seed": seed, **params}, label)
    state.preview_name = f"{label} (preview)"
    session.jobs.append(state)
    return state


def follow(job_id: str) -> JobState:
    client = ensure_connected()
    state = JobState(client.fetch(job_id), {}, job_id)
    state.preview_name = f"{job_id} (preview)"
    session.jobs.append(state)
    return state


def _apply_previews(state: JobState, interval: float) -> None:
    now = time.monotonic()
    if now - state.last_update < interval and not state.handle.finished:
        return
    for kind in ("gaussians", "mesh", "texture"):
        message = state.handle.previews.get(kind)
        if message is None or state.applied.get(kind) == message["seq"]:
            continue
        data = message["data"]
        if kind == "gaussians":
            scene_io.apply_gaussian_preview(state.preview_name, data["means"], data["rgb"], data["opacity"])
        elif kind == "mesh":
            scene_io.apply_mesh(state.preview_name, data["vertices"], data["faces"])
        elif kind == "texture" and bpy.data.objects.get(state.preview_name) is not None:
            image = scene_io.image_from_rgba(f"{state.preview_name} texture", data["rgba"])
            obj = bpy.data.objects[state.preview_name]
            if len(obj.data.polygons):
                scene_io.assign_texture(obj, image, f"{state.preview_name} material")
        state.applied[kind] = message["seq"]
        state.last_update = now


def _finalize(state: JobState) -> None:
    if state.result_object or state.handle.state != "done":
        return
    result = state.handle.result
    arrays, files = result["arrays"], result["files"]
    name = state.label or result["job_id"]
    base, k = name, 2
    while bpy.data.objects.get(name) is not None:  # keep earlier versions
        name, k = f"{base}.{k:03d}", k + 1
    obj = scene_io.apply_mesh(name, arrays["vertices"], arrays["faces"], arrays.get("uv"))
    if "texture.png" in files:
        image = scene_io.packed_image_from_png(f"{name} texture", np.asarray(files["texture.png"]).tobytes())
        scene_io.assign_texture(obj, image, f"{name} material")
    obj.location = bpy.context.scene.cursor.location
    obj["splatsmith_job_id"] = result["job_id"]
    for key, value in state.params.items():
        if isinstance(value, (int, float, str, bool)):
            obj[f"splatsmith_{key}"] = value
    scene_io.remove_object(state.preview_name)
    state.result_object = obj.name


def pump(budget_s: float = 0.01) -> None:
    """Read what arrived and apply it: bounded work for one timer tick."""
    if session.client is None:
        return
    try:
        session.client.poll(0.0, max_messages=64)
    except ClientError as exc:
        session.error = exc.message
        return
    interval = _settings().preview_interval
    start = time.monotonic()
    for state in list(session.jobs):
        if time.monotonic() - start > budget_s:
            break
        if not state.result_object:
            _apply_previews(state, interval)
            if state.handle.finished:
                _finalize(state)
                if state.handle.error:
                    state.message = state.handle.error["message"]


def wait(state: JobState, timeout: float | None = None) -> None:
    """Pump until the job ends (or ``timeout`` seconds pass)."""
    end = None if timeout is None else time.monotonic() + timeout
    while not (state.handle.finished and (state.result_object or state.handle.state != "done")):
        if end is not None and time.monotonic() > end:
            raise ClientError("timeout", f"the job did not finish within {timeout:g} s")
        session.client.poll(0.05)
        pump(budget_s=1.0)


def _tick():
    pump()
    return TICK_S


def start_timer() -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_S, persistent=True)


def stop() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if session.client is not None:
        session.client.close()
    session.client, session.welcome, session.jobs = None, None, []
