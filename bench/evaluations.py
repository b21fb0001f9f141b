"""Denoiser evaluations of a ``default`` IM-3D run against a ``default`` DreamGaussian image run,
counted two ways: batched calls (one per denoiser call, whatever its batch: IM-3D's own count,
section 3) and single-view evaluations (each view of a batch counted: one IM-3D call on its 16
views is 16). Prints figures; asserts nothing.

    python bench/evaluations.py

The counts depend on the schedules' step counts only, so the ``default`` presets run with the
tiny random models and the render sizes shrunk (the same steps, views and regenerations).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.images import demo_photo  # noqa: E402
from backend.jobs import JobStore  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.dreamgaussian import DreamGaussianPipeline  # noqa: E402
from backend.pipelines.im3d import IM3DPipeline  # noqa: E402
from backend.worker import run_local  # noqa: E402

#: Sizes shrunk so the default schedules run in minutes on a CPU; step counts untouched.
SMALL = {"weights": "tiny", "ref_size": 64, "mesh_resolution": 32, "texture_size": 64}
RUNS = {
    "im3d": (IM3DPipeline, dict(SMALL, view_size=64, init_points=500, iters=3, regen_every=1)),
    "dreamgaussian": (DreamGaussianPipeline, dict(SMALL, resolutions="32,32,32", init_points=500, bake_size=64,
                                                  texture_render_size=64)),
}


def main() -> None:
    rgb, mask = demo_photo()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pipeline, params) in RUNS.items():
            _, result = run_local(JobStore(Path(tmp) / name), pipeline, "default", params, {"image": rgb, "mask": mask},
                                  0, Emitter())
            rows.append((name, result.meta["denoiser_evaluations"], result.meta["view_evaluations"]))
    print(f"{'default image run':<20}{'batched calls':>15}{'single views':>15}")
    for name, calls, views in rows:
        print(f"{name:<20}{calls:>15}{views:>15}")
    (_, im3d_calls, im3d_views), (_, dg_calls, dg_views) = rows
    print(f"dreamgaussian / im3d: {dg_calls / im3d_calls:.1f}x the batched calls, {dg_views / im3d_views:.2f}x the "
          "single-view evaluations")


if __name__ == "__main__":
    main()
