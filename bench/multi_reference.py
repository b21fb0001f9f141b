"""What a second reference image buys: the prior oracle, image mode, ``fast``, front only against
front and back.

Prints figures; asserts nothing (``tests/test_multi_reference_acceptance.py`` asserts the issue's
thresholds on the same runs). For each method and seed, the teacher is the prior oracle
(``oracle_modes=2``, ``oracle_sigma=0.3``: the test object of ``tests/scenes.py`` and its hue
turned by 180 degrees) and the references are the oracle's renders of the truth (mode 0) at the
given views. Printed per run:

- ``held-out``: PSNR of the final textured mesh against mode 0 from 8 held-out views
  (``tests/scenes.held_out_scores``);
- ``fit``: PSNR of the final mesh at each given view against its reference image (over white);
- ``further``: PSNR against the truth at each further view, for the front-only run (which never
  saw it) and the run given it;
- the seconds the job took.

    python bench/multi_reference.py                       # dreamgaussian and dtc123, seed 0
    python bench/multi_reference.py --methods dreamgaussian --seeds 0 1 2
    python bench/multi_reference.py --views 180,0 90,0    # front plus back and left
    python bench/multi_reference.py --plain               # the plain oracle (a perfect teacher): the ceiling
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PRIOR = {"teacher": "oracle", "oracle_modes": 2, "oracle_sigma": 0.3}
#: The plain oracle (K=1, sigma=0): the truth at every noise level, what the preset reaches with a perfect teacher.
PLAIN = {"teacher": "oracle", "oracle_modes": 1, "oracle_sigma": 0.0}


def given_view_fit(job_dir: Path, textured, radius: float, fovy: float = 49.1) -> list[float]:
    """PSNR (dB, over white) of ``textured`` rendered at each given reference view of a job
    against the job's own reference images (``reference.png``, ``reference_k.png``), the front
    first; the views are read back from ``request.json`` / ``inputs.npz`` through the same
    ``stages.reference_views.reference_angles`` the job used."""
    import json

    from PIL import Image

    from backend.cameras import orbit_cameras
    from backend.render.mesh import render_mesh
    from backend.stages.reference_views import reference_angles, reference_file
    from backend.stages.reconstruction import psnr

    params = json.loads((job_dir / "request.json").read_text())["params"]
    inputs = dict(np.load(job_dir / "inputs.npz")) if (job_dir / "inputs.npz").is_file() else {}
    out = []
    for k, (azimuth, elevation) in enumerate(reference_angles(params, inputs)):
        rgba = np.asarray(Image.open(job_dir / reference_file(k))).astype(np.float32) / 255.0
        ref = torch.from_numpy(rgba[..., :3] * rgba[..., 3:] + 1.0 - rgba[..., 3:])[None]
        cams = orbit_cameras(elevation, azimuth, radius, fovy, rgba.shape[1], rgba.shape[0])
        with torch.no_grad():
            rendered = render_mesh(textured, cams, background=1.0).rgb
        out.append(psnr(rendered, ref))
    return out


def truth_psnr_at(job_dir: Path, truth, views: list[tuple[float, float]], radius: float, size: int = 128,
                  fovy: float = 49.1) -> list[float]:
    """PSNR (dB, over white) of a job's asset (moved back into its own frame) against the true
    object at each (azimuth, elevation) view: what a run makes of a side, whether or not it was
    given an image of it."""
    from backend.cameras import orbit_cameras
    from backend.render.mesh import render_mesh
    from backend.stages.reconstruction import psnr
    from scenes import load_asset

    asset = load_asset(job_dir)
    out = []
    for azimuth, elevation in views:
        cams = orbit_cameras(elevation, azimuth, radius, fovy, size, size)
        with torch.no_grad():
            out.append(psnr(render_mesh(asset, cams, background=1.0).rgb, render_mesh(truth, cams, background=1.0).rgb))
    return out


def run(method: str, views: list[tuple[float, float]], seed: int, root: Path, glb: Path, mesh,
        teacher: dict = PRIOR) -> dict:
    """One job of ``method`` (``fast``, the ``teacher``'s oracle parameters: the prior oracle by
    default) with the front and ``views`` (azimuth, elevation) as references; returns its held-out
    PSNR against mode 0, the fit at each given view, its seconds, job folder and radius."""
    from backend.contracts import Emitter
    from backend.jobs import JobStore
    from backend.pipelines import REGISTRY, load_builtin
    from backend.worker import run_local
    from scenes import held_out_scores, load_asset

    load_builtin()
    cls = REGISTRY[method]
    params = dict(teacher, oracle_mesh=str(glb), **({"mode": "image"} if "mode" in cls.params else {}))
    inputs = {"reference_views": np.array(views, np.float32)} if views else {}
    start = time.monotonic()
    job, result = run_local(JobStore(root / "jobs"), cls, "fast", params, inputs, seed, Emitter())
    seconds = time.monotonic() - start
    textured = load_asset(job.dir)
    radius = result.meta["radius"]
    return {"held_out": held_out_scores(mesh, radius, textured=textured)["mesh_psnr"],
            "fit": given_view_fit(job.dir, textured, radius), "seconds": seconds, "job_dir": job.dir, "radius": radius}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dreamgaussian", "dtc123"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--views", nargs="+", default=["180,0"], help="further views as AZIMUTH,ELEVATION")
    parser.add_argument("--plain", action="store_true", help="the plain oracle (K=1, sigma=0) instead of the prior")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from scenes import make_test_object, write_object_glb

    views = [tuple(float(x) for x in v.split(",")) for v in args.views]
    mesh, raw = make_test_object()
    with tempfile.TemporaryDirectory() as tmp:
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        print(f"{'method':14} {'seed':>4} {'references':>10} {'held-out dB':>11}  fit at the given views, dB  seconds")
        for method in args.methods:
            for seed in args.seeds:
                teacher = PLAIN if args.plain else PRIOR
                single = run(method, [], seed, Path(tmp), glb, mesh, teacher)
                multi = run(method, views, seed, Path(tmp), glb, mesh, teacher)
                for label, r in (("front", single), (f"+{len(views)}", multi)):
                    fits = " ".join(f"{f:.2f}" for f in r["fit"])
                    print(f"{method:14} {seed:>4} {label:>10} {r['held_out']:>11.2f}  {fits:26} {r['seconds']:7.0f}")
                print(f"{method:14} {seed:>4} {'gain':>10} {multi['held_out'] - single['held_out']:>+11.2f}  "
                      f"worst given-view fit {min(multi['fit']) - single['fit'][0]:+.2f} dB against the single "
                      "run's front")
                at = [truth_psnr_at(r["job_dir"], mesh, views, r["radius"]) for r in (single, multi)]
                print(f"{method:14} {seed:>4} {'further':>10}  against the truth at the further views: "
                      + ", ".join(f"{a:g},{e:g}: {s_:.2f} -> {m:.2f} dB" for (a, e), s_, m in zip(views, *at)))


if __name__ == "__main__":
    main()
