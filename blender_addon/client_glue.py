"""The add-on's side of the wire: one client, the jobs it follows, and the pump that applies
their previews and results to the scene on Blender's main thread.

``pump`` does bounded work (one poll, at most one scene update per job and kind) and is called
by a ``bpy.app.timers`` tick; operators with ``wait=True`` call it themselves, because timers do
not run in background mode or with bpy as a module.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import bpy
import numpy as np

from shared_protocol import __version__ as ADDON_PROTOCOL_VERSION
from shared_protocol import messages
from shared_protocol.client import DEFAULT_ADDRESS, Client, ClientError, JobHandle, Timeouts, load_curve_keys

from . import preferences, scene_io

TICK_S = 0.1

#: Settings used when the add-on is not enabled through the preferences (scripts, tests).
DEFAULT_SETTINGS = SimpleNamespace(address=DEFAULT_ADDRESS, server_key="", client_key="", ping_timeout=1.0,
                                   submit_timeout=10.0, transfer_timeout=120.0, lost_timeout=15.0,
                                   preview_interval=0.5, start_command="splatsmith serve --device auto")


@dataclass
class JobState:
    """One job this Blender session follows.

    Attributes:
        handle: the client's handle (state, progress, previews, result, error).
        request: what was submitted (pipeline, preset, seed, params, image source, label):
            stored on the result object so Regenerate and Variation can submit it again.
        label: the name the result object gets.
        preview_name: the object showing previews while the job runs.
        applied: preview kind -> seq of the last preview applied to the scene.
        result_object: the final object's name once applied.
        message: a sentence for the panel when the job ended without a result.
        on_preview, on_result, on_failure: optional callables (state, kind, data), (state, result)
            -> object name, (state) that replace the default handling (a preview object, a new
            result object, removing the preview); used by texture refinement.
    """

    handle: JobHandle
    request: dict
    label: str
    preview_name: str = ""
    applied: dict[str, int] = field(default_factory=dict)
    last_update: float = 0.0
    result_object: str = ""
    message: str = ""
    on_preview: object = None
    on_result: object = None
    on_failure: object = None

    @property
    def job_id(self) -> str | None:
        return self.handle.job_id

    @property
    def ended(self) -> bool:
        """The job is finished and its outcome (result object or message) is applied."""
        return self.handle.finished and bool(self.result_object or self.message)


class Session:
    def __init__(self) -> None:
        self.client: Client | None = None
        self.address = ""
        self.welcome: dict | None = None
        self.jobs: list[JobState] = []
        self.server_jobs: list[dict] = []
        self.error = ""
        self.backend_process: subprocess.Popen | None = None
        self.starting: Starting | None = None
        #: The last reference image a job ended with (a name in ``bpy.data.images``) and that
        #: job's request, for the panel's "Use this image".
        self.reference_image = ""
        self.reference_request: dict = {}


@dataclass
class Starting:
    """A local backend being started: the timer probes it with pings until it answers, it
    exits, or ``deadline`` passes; the UI never waits for it."""

    address: str
    deadline: float
    log_path: str
    probe: Client | None = None
    answer: dict | None = None


session = Session()
#: Called with no arguments after every successful handshake (the settings read the new
#: welcome's parameters).
on_welcome: list = []


def settings():
    """The add-on preferences, or :data:`DEFAULT_SETTINGS` when the add-on was registered
    without the preferences system (scripts, tests)."""
    return preferences.get() or DEFAULT_SETTINGS


def explain(code: str, message: str) -> str:
    """A sentence for the artist: the client's message plus what to do about ``code``."""
    hints = {
        "refused": "Set the server's public key and this machine's secret key in the add-on preferences, "
                   "and put this machine's public key in the server's clients/ folder.",
        "bad_version": "Install the same Splatsmith version for the add-on and the backend.",
        "version_mismatch": "Install the same Splatsmith version for the add-on and the backend.",
        "out_of_memory": "Try the 'fast' preset or a smaller texture size, or close other programs using the GPU; "
                         "the backend keeps running.",
        "server_lost": "",
    }
    hint = hints.get(code, "")
    return f"{message} {hint}".strip()


def _check_server(welcome: dict) -> None:
    server = str(welcome.get("server", ""))
    name, _, version = server.partition(" ")
    if name != "splatsmith":
        raise ClientError("version_mismatch", f"the server at this address is {server!r}, not a Splatsmith backend")
    if version.split(".")[:2] != ADDON_PROTOCOL_VERSION.split(".")[:2]:
        raise ClientError("version_mismatch", f"the backend is Splatsmith {version}, this add-on is "
                                              f"{ADDON_PROTOCOL_VERSION}: versions do not match")


def connect(address: str | None = None) -> dict:
    """(Re)connect and handshake; returns the welcome.

    Raises:
        ClientError: no backend (``timeout``), CURVE refused (``refused``), protocol or server
            version mismatch (``bad_version``, ``version_mismatch``); ``session.error`` holds the
            explained message.
    """
    prefs = settings()
    address = address or prefs.address
    if session.client is not None:
        session.client.close()
        session.client, session.welcome = None, None
    try:
        timeouts = Timeouts(ping=prefs.ping_timeout, submit=prefs.submit_timeout, transfer=prefs.transfer_timeout,
                            lost=getattr(prefs, "lost_timeout", 15.0))
        curve = load_curve_keys(bpy.path.abspath(prefs.server_key) or None, bpy.path.abspath(prefs.client_key) or None)
        client = Client(address, timeouts=timeouts, curve=curve, name=f"blender {bpy.app.version_string}")
    except (ClientError, ValueError, OSError) as exc:
        session.error = explain(getattr(exc, "code", "bad_config"), getattr(exc, "message", str(exc)))
        raise ClientError("bad_config", session.error) from exc
    try:
        welcome = client.hello()
        _check_server(welcome)
    except ClientError as exc:
        client.close()
        session.error = explain(exc.code, exc.message)
        raise ClientError(exc.code, session.error) from exc
    session.client, session.address, session.error, session.welcome = client, address, "", welcome
    for callback in on_welcome:
        callback()
    for state in session.jobs:  # jobs followed on the old connection are followed again
        if state.job_id and not state.handle.finished:
            state.handle = client.fetch(state.job_id)
    return welcome


def ensure_connected() -> Client:
    if session.client is None:
        connect()
    return session.client


def start_backend(address: str | None = None, command: str | None = None, timeout: float = 120.0,
                  wait: bool = True) -> subprocess.Popen:
    """Start a backend on this machine (``command`` plus ``--bind address``) and connect once it
    answers a ping. With ``wait=False`` it returns at once and the timer finishes the start
    (``session.starting`` is set meanwhile; the panel shows it); ``wait=True`` (scripts,
    background mode) drives the same steps until the start ends.

    Raises:
        ClientError: ``bad_config`` (the command cannot be run, or the backend exited),
            ``timeout`` (it did not answer within ``timeout`` seconds) -- with ``wait=False``
            only the first; later failures land in ``session.error``.
    """
    prefs = settings()
    address = address or prefs.address
    argv = shlex.split(command or prefs.start_command) + ["--bind", address]
    log_path = os.path.join(tempfile.gettempdir(), "splatsmith-backend.log")
    try:
        with open(log_path, "ab") as log:  # a file, not a pipe: a pipe nobody reads would block the backend
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    except (OSError, ValueError) as exc:
        raise ClientError("bad_config", f"could not run {argv[0] if argv else command!r} ({exc}): set the local "
                                        "backend command in the add-on preferences") from exc
    session.backend_process = proc
    session.error = ""
    session.starting = Starting(address, time.monotonic() + timeout, log_path)
    if wait:
        while session.starting is not None:
            advance_start()
            time.sleep(0.05)
        if session.client is None:
            raise ClientError("timeout" if "did not answer" in session.error else "bad_config", session.error)
    return proc


def advance_start() -> None:
    """One bounded step of a local backend's start (called by the timer): probe it with a ping
    without blocking; connect when it answers; give up when it exits or times out."""
    start = session.starting
    if start is None:
        return
    proc = session.backend_process
    failure = ""
    if proc is None or proc.poll() is not None:
        with open(start.log_path, errors="replace") as log:
            tail = log.read()[-400:].strip()
        failure = f"the backend exited with {proc.returncode if proc else '?'}: {tail}"
    elif time.monotonic() > start.deadline:
        proc.terminate()
        failure = "the backend did not answer in time; see its log in " + start.log_path
    if failure:
        session.error, session.starting = failure, None
        if start.probe is not None:
            start.probe.close()
        return
    if start.probe is None:
        start.probe = Client(start.address, name="blender start probe")
    if start.answer is None:
        start.answer = {"type": "waiting"}
        start.probe.request(messages.make("ping"), lambda reply: setattr(start, "answer", reply), 1.0)
    start.probe.poll(0)
    if start.answer.get("type") == "pong":
        start.probe.close()
        session.starting = None
        try:
            connect(start.address)
        except ClientError:
            pass  # connect() put the explained sentence in session.error
    elif start.answer.get("type") == "error":
        start.answer = None  # no answer yet: ping again on the next tick


def _request_record(state: JobState) -> str:
    return json.dumps(state.request, sort_keys=True)


def submit(pipeline: str, params: dict, inputs: dict, preset: str, seed: int, label: str,
           source: dict | None = None) -> JobState:
    """Submit a job and follow it. ``source`` records where inputs came from (``image_path`` or
    ``image_name``) so that the job can be submitted again. Raises ClientError."""
    client = ensure_connected()
    handle = client.submit(pipeline, params=params, inputs=inputs, preset=preset, seed=seed, label=label)
    request = {"pipeline": pipeline, "preset": preset, "seed": seed, "params": params, "label": label, **(source or {})}
    state = JobState(handle, request, label)
    state.preview_name = f"{label} (preview)"
    session.jobs.append(state)
    refresh_jobs_async()
    return state


def follow(job_id: str) -> JobState:
    """Follow a job by id (e.g. one submitted before Blender or the backend restarted)."""
    client = ensure_connected()
    info = next((j for j in session.server_jobs if j.get("job_id") == job_id), {})
    state = JobState(client.fetch(job_id), {"pipeline": info.get("pipeline", ""), "preset": info.get("preset", ""),
                                            "seed": info.get("seed", 0)}, info.get("label") or job_id)
    state.preview_name = f"{state.label} (preview)"
    session.jobs.append(state)
    return state


def refresh_jobs() -> list[dict]:
    """The server's job list (newest last), kept in ``session.server_jobs``. Raises ClientError."""
    session.server_jobs = ensure_connected().status()
    return session.server_jobs


def refresh_jobs_async() -> None:
    """Ask for the job list without blocking; the reply updates ``session.server_jobs``."""
    def on_reply(reply: dict) -> None:
        if reply.get("type") == "status":
            session.server_jobs = reply["jobs"]

    if session.client is not None:
        session.client.request(messages.make("status"), on_reply, settings().ping_timeout)


def active_job() -> JobState | None:
    return next((s for s in reversed(session.jobs) if not s.handle.finished), None)


def _apply_previews(state: JobState, interval: float) -> None:
    now = time.monotonic()
    if now - state.last_update < interval and not state.handle.finished:
        return
    for kind in ("gaussians", "mesh", "texture", "views"):
        message = state.handle.previews.get(kind)
        if message is None or state.applied.get(kind) == message["seq"]:
            continue
        data = message["data"]
        state.applied[kind] = message["seq"]  # a preview that cannot be applied is skipped, not retried
        state.last_update = now
        try:
            _apply_preview(state, kind, data)
        except Exception as exc:  # noqa: BLE001 - a bad preview must not stop the add-on
            session.error = f"Splatsmith skipped a {kind} preview it could not show: {exc}"


def _apply_preview(state: JobState, kind: str, data: dict) -> None:
    if state.on_preview is not None:
        state.on_preview(state, kind, data)
    elif kind == "gaussians":
        scene_io.apply_gaussian_preview(state.preview_name, data["means"], data["rgb"], data["opacity"])
    elif kind == "mesh":
        scene_io.apply_mesh(state.preview_name, data["vertices"], data["faces"])
    elif kind == "views":  # a method's generated views (IM-3D), as one contact-sheet image
        scene_io.show_in_image_editors(scene_io.image_from_rgba(f"{state.preview_name} views", data["rgba"]))
    elif kind == "texture" and bpy.data.objects.get(state.preview_name) is not None:
        obj = bpy.data.objects[state.preview_name]
        if len(obj.data.polygons):
            image = scene_io.image_from_rgba(f"{state.preview_name} texture", data["rgba"])
            scene_io.assign_texture(obj, image, f"{state.preview_name} material")


def _new_object_name(base: str) -> str:
    name, k = base, 2
    while bpy.data.objects.get(name) is not None:  # keep earlier versions
        name, k = f"{base}.{k:03d}", k + 1
    return name


def _finalize(state: JobState) -> None:
    result = state.handle.result
    if state.on_result is not None:
        state.result_object = state.on_result(state, result)
        return
    arrays, files = result["arrays"], result["files"]
    if "vertices" not in arrays:
        _finalize_image(state, files)
        return
    name = _new_object_name(state.label or result["job_id"])
    obj = scene_io.apply_mesh(name, arrays["vertices"], arrays["faces"], arrays.get("uv"), arrays.get("normals"),
                              arrays.get("polygons"), arrays.get("polygon_sizes"))
    if "texture.png" in files:
        image = scene_io.packed_image_from_png(f"{name} texture", np.asarray(files["texture.png"]).tobytes())
        material = scene_io.assign_texture(obj, image, f"{name} material")
        if "normal.png" in files:
            normal = scene_io.packed_image_from_png(f"{name} normal", np.asarray(files["normal.png"]).tobytes())
            scene_io.add_normal_map(material, normal)
        if "metallic_roughness.png" in files:
            mr = scene_io.packed_image_from_png(f"{name} metallic roughness",
                                                np.asarray(files["metallic_roughness.png"]).tobytes())
            scene_io.add_metallic_roughness(material, mr)
    # The backend puts the origin at the bottom centre of the asset (stages.asset_output), so at
    # the cursor it stands on the cursor's height, its front (glTF +Z) towards Blender's -Y.
    obj.location = bpy.context.scene.cursor.location
    obj["splatsmith_job_id"] = result["job_id"]
    obj["splatsmith_request"] = _request_record(state)
    # A personalised teacher the backend kept for this object (DreamCraft3D's DreamBooth LoRA):
    # Regenerate and Variation reuse it (the pipeline's ``reuse_lora`` names this job).
    obj["splatsmith_dreambooth_lora"] = "dreambooth_lora.safetensors" in files
    for key, value in {**state.request, **state.request.get("params", {})}.items():
        if isinstance(value, (int, float, str, bool)):
            obj[f"splatsmith_{key}"] = value
    scene_io.remove_preview(state.preview_name)
    state.result_object = obj.name


#: The image files a job may end with instead of a mesh (a method's reference step), best first.
REFERENCE_FILES = ("reference.png", "reference_drawn.png")


def _finalize_image(state: JobState, files: dict) -> None:
    """A job that ends with a reference image, not a mesh (``reference_only``): the image is
    packed into the .blend, shown in the image editors and offered to the panel's "Use this
    image" (``session.reference_image``). Raises SceneDataError when there is no such file."""
    found = next((name for name in REFERENCE_FILES if name in files), None)
    if found is None:
        raise scene_io.SceneDataError("the job ended with neither a mesh nor a reference image")
    image = scene_io.packed_image_from_png(f"{state.label or state.job_id} reference",
                                           np.asarray(files[found]).tobytes())
    image["splatsmith_masked"] = found == "reference.png"
    scene_io.show_in_image_editors(image)
    scene_io.remove_preview(state.preview_name)
    session.reference_image = image.name
    session.reference_request = dict(state.request)
    state.result_object = image.name


def _end(state: JobState) -> None:
    if state.handle.state == "done":
        _finalize(state)
        return
    error = state.handle.error or {"code": state.handle.state, "message": f"the job was {state.handle.state}"}
    state.message = explain(error["code"], error["message"])
    if state.on_failure is not None:
        state.on_failure(state)
    else:
        scene_io.remove_preview(state.preview_name)


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "STATUSBAR"):
                area.tag_redraw()


def pump(budget_s: float = 0.01) -> None:
    """Read what arrived and apply it: bounded work for one timer tick. Never raises: whatever
    goes wrong (a malformed array, a failing callback) becomes one sentence in
    ``session.error`` or the job's message, and the next tick runs as usual."""
    try:
        advance_start()
        _pump(budget_s)
    except Exception as exc:  # noqa: BLE001 - the timer must keep running
        session.error = f"Splatsmith hit an unexpected problem and skipped it: {type(exc).__name__}: {exc}"


def _pump(budget_s: float) -> None:
    if session.client is None:
        return
    try:
        received = session.client.poll(0.0, max_messages=64)
    except ClientError as exc:
        session.error = explain(exc.code, exc.message)
        return
    interval = settings().preview_interval
    start = time.monotonic()
    for state in list(session.jobs):
        if time.monotonic() - start > budget_s:
            break
        if state.ended:
            continue
        _apply_previews(state, interval)
        if state.handle.finished:
            try:
                _end(state)
            except Exception as exc:  # noqa: BLE001 - e.g. a result with malformed arrays
                state.message = (f"the result of job {state.job_id} could not be brought into the scene: {exc}. "
                                 "Its files stay on the backend (fetch it again, or use `splatsmith fetch`).")
                try:
                    scene_io.remove_preview(state.preview_name)
                except Exception:  # noqa: BLE001
                    pass
            refresh_jobs_async()
            received = True
    if received:
        _redraw()


def wait(state: JobState, timeout: float | None = None) -> None:
    """Pump until the job ends (or ``timeout`` seconds pass). Raises ClientError on timeout."""
    end = None if timeout is None else time.monotonic() + timeout
    while not state.ended:
        if end is not None and time.monotonic() > end:
            raise ClientError("timeout", f"the job did not finish within {timeout:g} s")
        session.client.poll(0.05)
        pump(budget_s=1.0)


def format_progress(state: JobState) -> tuple[float, str]:
    """(fraction in [0, 1], "stage step/total, ETA") for the panel and the status bar."""
    progress = state.handle.progress
    if not progress:
        return 0.0, state.handle.state
    total = max(int(progress.get("total") or 0), 1)
    text = f"{progress['stage']} {progress['step']}/{progress['total']}"
    eta = progress.get("eta_s")
    if eta is not None:
        text += f", {int(eta) // 60}:{int(eta) % 60:02d} left"
    return min(progress["step"] / total, 1.0), text


def draw_status_bar(self, context) -> None:
    """Appended to Blender's status bar: the running job's progress."""
    state = active_job()
    if state is None:
        return
    factor, text = format_progress(state)
    self.layout.progress(factor=factor, type="BAR", text=f"Splatsmith: {text}")


def _tick():
    try:
        pump()
    except BaseException:  # noqa: BLE001 - returning None would unregister the timer
        pass
    return TICK_S


def start_timer() -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_S, persistent=True)
    bpy.types.STATUSBAR_HT_header.append(draw_status_bar)


def stop() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)
    if session.client is not None:
        session.client.close()
    if session.backend_process is not None and session.backend_process.poll() is None:
        session.backend_process.terminate()  # a backend this add-on started ends with it
    session.__init__()
