"""One parameter of a method swept on the oracle: for each value, the held-out mask IoU and PSNR of
the job's Gaussians and textured mesh against the test object (``tests/scenes.py``), and the
time. The choices ``docs/methods.md`` says were made by measurement are re-measured with it.
Prints figures; asserts nothing.

    python bench/sweep.py --pipeline dtc123 --param lr_offsets=1e-4,3e-4,1e-3
    python bench/sweep.py --pipeline im3d --param view_elevations="0;20,-20;0,25,0,-25" --set views=8
    python bench/sweep.py --pipeline dreamcraft3d --mode text --param boost_texture_lr=0.01,0.05

``--param KEY=V1,V2,...`` (values separated by ``;`` instead when a value holds commas) is the
swept parameter; ``--set KEY=VALUE`` fixes others; the oracle is every teacher, preset ``fast``
unless ``--preset``, image mode unless ``--mode text``, seeds ``--seeds``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backend.jobs import JobStore  # noqa: E402
from backend.pipelines import load_builtin  # noqa: E402
from backend.pipelines.base import Emitter, Param  # noqa: E402
from backend.render.gaussians import GaussianModel  # noqa: E402
from backend.worker import run_local  # noqa: E402
from scenes import held_out_scores, load_asset, make_test_object, write_object_glb  # noqa: E402


def parse(spec, pair: str) -> tuple[str, list]:
    """``KEY=V1,V2`` (or ``KEY=V1;V2``) -> (key, values checked against the parameter)."""
    key, _, text = pair.partition("=")
    if key not in spec.params:
        raise SystemExit(f"{spec.name} has no parameter {key!r}")
    param: Param = spec.params[key]
    parts = text.split(";") if ";" in text or param.kind == "str" else text.split(",")
    return key, [param.parse(key, v) for v in parts]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--param", required=True, help="KEY=V1,V2,... the swept parameter")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, fixed (repeatable)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--mode", choices=("image", "text"), default="image")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    spec = load_builtin()[args.pipeline]
    pipeline = spec.implementation_class()
    key, values = parse(spec, args.param)
    fixed = {k: v[0] for k, v in (parse(spec, pair) for pair in args.set)}
    mesh, raw = make_test_object()
    with tempfile.TemporaryDirectory() as tmp:
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        base = {"teacher": "oracle", "oracle_mesh": str(glb), **fixed}
        if "mode" in spec.params:
            base["mode"] = args.mode
        if args.mode == "text":
            base["prompt"] = "the test object"
        print(f"{args.pipeline} {args.preset}, oracle, {args.mode} mode, {key} swept; held-out IoU / PSNR (dB)")
        for value in values:
            for seed in args.seeds:
                start = time.monotonic()
                job, result = run_local(JobStore(Path(tmp) / f"{key}-{value}-{seed}"), pipeline, args.preset,
                                        dict(base, **{key: value}), {}, seed, Emitter())
                seconds = time.monotonic() - start
                radius = result.meta.get("radius", 2.0)
                gaussians = job.dir / "gaussians.ply"
                scores = held_out_scores(mesh, radius, GaussianModel.load_ply(gaussians) if gaussians.is_file() else None,
                                         load_asset(job.dir))
                splats = (f"Gaussians {scores['gaussian_iou']:.3f} / {scores['gaussian_psnr']:.2f}  "
                          if "gaussian_iou" in scores else "")
                print(f"{key}={value!s:<14} seed {seed}  {splats}mesh {scores['mesh_iou']:.3f} / "
                      f"{scores['mesh_psnr']:.2f}  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
