"""Small real pipelines for the server tests: they do real (tiny) torch work, report through
``emit``, honour cancellation, write result files, and fail in the ways real ones fail.

torch is imported inside ``run`` only: the module is also loaded by ``splatsmith serve
--plugin pipelines_for_tests``, whose server process must not import torch."""
from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np

from backend.pipelines.base import CancelToken, Emitter, InputSpec, JobRequest, Param, ParamError, Pipeline, Result


class FitPipeline(Pipeline):
    """Fits points to a target point cloud (the input, or a sphere) with Adam."""

    name = "fit"
    title = "Fit a point cloud (test)"
    params = {
        "steps": Param("int", 40, "optimisation steps", min=1, max=100_000),
        "step_ms": Param("float", 0.0, "extra time per step, ms", min=0.0, max=1000.0),
        "points": Param("int", 256, "number of points", min=1, max=200_000),
        "lr": Param("float", 0.05, "Adam learning rate", min=1e-6, max=1.0),
        "preview_every": Param("int", 1, "steps between previews", min=1, max=1000),
        "file_mb": Param("float", 0.0, "size of an extra result file 'blob.bin' (seeded random bytes), MiB", min=0, max=256),
    }
    presets = {"default": {}, "fast": {"steps": 10}}
    inputs = {"target": InputSpec(("float32",), (None, 3), help="target points [N, 3]")}

    @classmethod
    def check_request(cls, params, inputs):
        if "target" in inputs and inputs["target"].shape[0] != params["points"]:
            raise ParamError(f"target has {inputs['target'].shape[0]} points but 'points' is {params['points']}")

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        import torch

        p = request.params
        gen = torch.Generator().manual_seed(request.seed)
        if "target" in request.inputs:
            target = torch.from_numpy(np.array(request.inputs["target"]))
        else:
            target = torch.nn.functional.normalize(torch.randn(p["points"], 3, generator=gen), dim=1)
        x = torch.zeros(p["points"], 3, requires_grad=True)
        opt = torch.optim.Adam([x], lr=p["lr"])
        for step in range(1, p["steps"] + 1):
            cancel.check()
            loss = ((x - target) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if p["step_ms"]:
                time.sleep(p["step_ms"] / 1000)
            emit.progress("fit", step, p["steps"], loss.item())
            if step % p["preview_every"] == 0:
                colours = (x.detach().clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)
                emit.preview("gaussians", {"means": x, "rgb": colours, "opacity": torch.ones(p["points"])},
                             meta={"step": step})
        points = x.detach().numpy().astype(np.float32)
        path = request.job_dir / "points.bin"
        points.tofile(path)
        files = {"points.bin": path}
        if p["file_mb"]:
            blob = np.random.default_rng(request.seed).integers(0, 256, int(p["file_mb"] * 2**20), dtype=np.uint8)
            blob.tofile(request.job_dir / "blob.bin")
            files["blob.bin"] = request.job_dir / "blob.bin"
        return Result(files=files, arrays={"points": points},
                      meta={"final_loss": loss.item(), "steps": p["steps"]})


class BoomPipeline(Pipeline):
    """Raises after two steps, like a pipeline with a bug."""

    name = "boom"
    params = {"steps": Param("int", 2, "steps before the error", min=0, max=100)}

    def run(self, request, emit, cancel):
        for step in range(request.params["steps"]):
            cancel.check()
            emit.progress("boom", step + 1, request.params["steps"])
        raise ValueError("the pipeline tripped over a bad value")


class HogPipeline(Pipeline):
    """Asks the allocator for far more memory than exists: a real out-of-memory error."""

    name = "hog"
    params = {"estimate_gib": Param("float", 0.0, "memory this job says it needs, GiB", min=0, max=1e9)}

    @classmethod
    def estimate_memory(cls, params, inputs):
        return {"estimate_gib": int(params["estimate_gib"] * 2**30)}

    def run(self, request, emit, cancel):
        import torch

        emit.progress("alloc", 0, 1)
        big = torch.empty(2**50, dtype=torch.uint8)  # 1 PiB
        return Result(meta={"size": big.numel()})


class CachedPipeline(Pipeline):
    """Loads a small torch model through the job's model cache and says whether it loaded it."""

    name = "cached"
    params = {"key": Param("str", "model", "cache key", max_len=64)}

    def run(self, request, emit, cancel):
        import torch

        loaded = []
        request.models.get(request.params["key"], lambda: loaded.append(1) or torch.nn.Linear(4, 4))
        emit.progress("load", 1, 1)
        return Result(meta={"loaded_now": bool(loaded), "pid": os.getpid()})


class OomPipeline(Pipeline):
    """Loads a model into the job's cache, then runs out of device memory the way CUDA reports
    it (``torch.cuda.OutOfMemoryError``), unless ``fail`` is off."""

    name = "oom"
    params = {"key": Param("str", "model", "cache key", max_len=64), "fail": Param("bool", True, "raise the OOM")}

    def run(self, request, emit, cancel):
        import torch

        request.models.get(request.params["key"], lambda: torch.nn.Linear(4, 4))
        emit.progress("alloc", 0, 1)
        if request.params["fail"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return Result(meta={"cached": request.models.keys()})


class CrashPipeline(Pipeline):
    """Dies in native ways after a few steps: a segfault, an abort or a kill of its own process,
    as a CUDA kernel, a C++ library or the OOM killer would."""

    name = "crash"
    params = {"how": Param("choice", "segv", "how to die", choices=("segv", "abort", "kill", "hang", "spin")),
              "steps": Param("int", 3, "steps before dying", min=0, max=1000),
              "step_ms": Param("float", 20.0, "time per step, ms", min=0, max=1000)}

    def run(self, request, emit, cancel):
        for step in range(request.params["steps"]):
            cancel.check()
            emit.progress("crash", step + 1, request.params["steps"])
            time.sleep(request.params["step_ms"] / 1000)
        how = request.params["how"]
        if how == "segv":
            ctypes.string_at(0)  # a real invalid read: SIGSEGV
        elif how == "abort":
            os.abort()
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "spin":  # ignores cancellation but keeps reporting, as a loop without cancel.check() would
            for step in range(10**9):
                emit.progress("spin", step % 100 + 1, 100)
                emit.log(f"spin {step}")  # (progress is throttled to 10 Hz; log lines are not)
                time.sleep(0.005)
        else:  # ignores cancellation, as native code that never returns would
            while True:
                time.sleep(0.05)


class MeshPipeline(Pipeline):
    """A tetrahedron with a texture, as a generation method returns it; ``defect`` spoils its
    previews and result the ways a broken or hostile backend could (for the add-on's tests)."""

    name = "mesh"
    params = {"defect": Param("choice", "none", "what to spoil", choices=("none", "faces", "shape", "nan"))}

    def run(self, request, emit, cancel):
        import io

        from PIL import Image

        defect = request.params["defect"]
        vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
        faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
        uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
        if defect == "faces":
            faces = np.array([[0, 1, 2], [0, 1, 1_000_000]], np.int32)
        elif defect == "nan":
            vertices[1, 0] = np.nan
        means, rgb = vertices, np.full((4, 3), 200, np.uint8)
        if defect == "shape":
            rgb, uv = np.full((7, 3), 200, np.uint8), np.zeros((9, 2), np.float32)
        emit.preview("gaussians", {"means": means, "rgb": rgb, "opacity": np.ones(4, np.float32)})
        emit.preview("mesh", {"vertices": vertices, "faces": faces})
        texture = np.full((8, 8, 4), 255, np.uint8)
        emit.preview("texture", {"rgba": texture if defect == "none" else texture[..., :3]})
        emit.progress("mesh", 1, 1)
        buf = io.BytesIO()
        Image.fromarray(texture).save(buf, format="PNG")
        (request.job_dir / "texture.png").write_bytes(buf.getvalue())
        return Result(files={"texture.png": request.job_dir / "texture.png"},
                      arrays={"vertices": vertices, "faces": faces, "uv": uv}, meta={"faces": len(faces)})


TEST_PIPELINES = {cls.name: cls for cls in (FitPipeline, BoomPipeline, HogPipeline, CachedPipeline, CrashPipeline,
                                             MeshPipeline, OomPipeline)}
#: Read by ``splatsmith serve --plugin pipelines_for_tests``.
PIPELINES = TEST_PIPELINES


def run_a_job_cancelled_on_its_way(server, worker) -> dict:
    """Run a long ``fit`` job on ``worker`` (idle, of ``server``) that was cancelled as
    ``Dispatcher.cancel`` does it, after the dispatcher handed it to the worker but before it
    reached it; returns the outcome. The job must stop by itself: ``should_kill`` only fires
    after 300 s, a ceiling against hangs (the job alone would run 500 s)."""
    cls = server.pipelines["fit"]
    preset, params = cls.resolve(None, {"steps": 100_000, "step_ms": 5.0}, {})
    job = server.store.create("fit", preset, params, 0, "", {})
    job.cancel.cancel()
    worker.cancel()
    start = time.monotonic()
    return worker.run(job, cls.reference(), lambda: time.monotonic() - start > 300)
