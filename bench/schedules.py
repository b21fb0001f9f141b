"""Which timestep schedule? The same object, seeds and budget, text mode with the oracle teacher
(DESIGN.md section 5), for every named schedule (``uniform``, ``dreamgaussian``, ``dreamtime``,
``dtc``): held-out mask IoU and PSNR of the Gaussians at 25, 50, 75 and 100% of the stage-1
iterations, and of the final textured mesh. Prints the table and writes it with a convergence
plot to ``docs/schedules.md`` and ``docs/schedules.png``. Prints figures; asserts nothing.

    python bench/schedules.py                          # the dreamtime method's fast preset, CPU or GPU
    python bench/schedules.py --seeds 0 1 2 --iters 1000

The oracle's score is exact, so this measures how each schedule spends a budget on an
optimisation whose target is known, not the look of a diffusion model's samples.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backend.jobs import JobStore  # noqa: E402
from backend.pipelines.base import Emitter, TIMESTEP_SCHEDULES  # noqa: E402
from backend.pipelines.dreamtime import DreamTimePipeline  # noqa: E402
from backend.stages.distillation import run_distillation  # noqa: E402
from backend.worker import run_local  # noqa: E402
from scenes import held_out_scores, load_asset, make_test_object, write_object_glb  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def run_one(schedule: str, seed: int, preset: str, iters: int | None, glb: Path, mesh, device: str, tmp: Path) -> dict:
    """One run; returns {"curve": {fraction: (iou, psnr)}, "mesh": (iou, psnr), "seconds": s}."""
    curve: dict = {}
    params = {"mode": "text", "prompt": "the test object", "teacher": "oracle", "oracle_mesh": str(glb),
              "timestep_schedule": schedule}
    if iters:
        params["iters"] = iters

    class Probe(DreamTimePipeline):
        def run(self, request, emit, cancel):
            total = request.params["iters"]
            marks = {max(1, round(f * total)): f for f in FRACTIONS}
            radius = request.params["radius"]

            def on_step(step, model):
                if step in marks:
                    s = held_out_scores(mesh, radius, model)
                    curve[marks[step]] = (s["gaussian_iou"], s["gaussian_psnr"])
            return run_distillation(request, emit, cancel, "dreamtime", on_step=on_step)

    start = time.perf_counter()
    job, result = run_local(JobStore(tmp / f"{schedule}-{seed}"), Probe, preset, params, {}, seed, Emitter(), device)
    final = held_out_scores(mesh, result.meta["radius"], textured=load_asset(job.dir))
    return {"curve": curve, "mesh": (final["mesh_iou"], final["mesh_psnr"]), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iters", type=int, default=0, help="stage-1 iterations (0: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--schedules", nargs="+", default=list(TIMESTEP_SCHEDULES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for schedules.md and schedules.png")
    args = parser.parse_args()

    mesh, raw = make_test_object()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        for name in args.schedules:
            for seed in args.seeds:
                r = run_one(name, seed, args.preset, args.iters or None, glb, mesh, args.device, Path(tmp))
                runs.setdefault(name, []).append(r)
                print(f"{name:14s} seed {seed}: " + "  ".join(f"{int(f * 100)}% {r['curve'][f][0]:.3f}/{r['curve'][f][1]:.2f}"
                                                             for f in FRACTIONS)
                      + f"  mesh {r['mesh'][0]:.3f}/{r['mesh'][1]:.2f}  ({r['seconds']:.0f} s)", flush=True)
    iters = args.iters or DreamTimePipeline.presets[args.preset].get("iters", DreamTimePipeline.params["iters"].default)
    table = _table(runs, iters, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "schedules.md").write_text(table)
    _plot(runs, iters, args.out / "schedules.png")
    print(f"wrote {args.out / 'schedules.md'} and {args.out / 'schedules.png'}")


def _mean(runs: list[dict], key, index: int) -> float:
    return float(np.mean([(r["curve"][key] if key in r["curve"] else r[key])[index] for r in runs]))


def _table(runs: dict, iters: int, args) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    lines = [f"Held-out mask IoU / PSNR (dB) of the Gaussians at a fraction of {iters} stage-1 iterations, and of the "
             f"final textured mesh; text mode, oracle teacher, `dreamtime` method's `{args.preset}` preset, seeds "
             f"{', '.join(map(str, args.seeds))} (mean), {device}. Written by `bench/schedules.py`.", "",
             "| schedule | 25% | 50% | 75% | 100% | textured mesh | seconds |", "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        cells = [f"{_mean(rs, f, 0):.3f} / {_mean(rs, f, 1):.2f}" for f in FRACTIONS]
        mesh = f"{_mean(rs, 'mesh', 0):.3f} / {_mean(rs, 'mesh', 1):.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mesh} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def _plot(runs: dict, iters: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [int(f * iters) for f in FRACTIONS]
    for name, rs in runs.items():
        left.plot(xs, [_mean(rs, f, 0) for f in FRACTIONS], marker="o", label=name)
        right.plot(xs, [_mean(rs, f, 1) for f in FRACTIONS], marker="o", label=name)
    left.set(xlabel="stage-1 iteration", ylabel="held-out mask IoU", title="Gaussians: silhouette")
    right.set(xlabel="stage-1 iteration", ylabel="held-out PSNR (dB)", title="Gaussians: colour")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
