"""The time the output options add to a job (``stages.asset_output.write_asset``).

Prints figures; asserts nothing. The case is the size of a ``fast`` job's mesh stage: a bumpy
sphere of 81,920 faces (a marching-cubes surface of that order) decimated to ``fast``'s 20,000
faces, unwrapped, with a 512^2 texture. Times ``write_asset`` with ``normal_map=false``
(placement only), with the defaults (placement, the normal map baked from the full surface),
with ``remesh=quad`` (5,000 quads, colour and normals baked onto them) and with ``pbr=true``
(26 views decomposed by the intrinsics model: ``--weights tiny``, the random stand-in on this
CPU, times the plumbing; ``default`` the real Marigold where its weights are), best of three.

    python bench/asset_output.py [--faces 20000] [--texture-size 512]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.contracts import CancelToken  # noqa: E402
from backend.geometry.extract import decimate  # noqa: E402
from backend.geometry.uv import unwrap  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.stages.asset_output import write_asset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=20_000)
    parser.add_argument("--texture-size", type=int, default=512)
    parser.add_argument("--weights", choices=("tiny", "default"), default="tiny", help="the intrinsics model of pbr")
    args = parser.parse_args()
    s = trimesh.creation.icosphere(subdivisions=6, radius=0.5)
    v = np.asarray(s.vertices)
    full = trimesh.Trimesh(v * (1 + 0.04 * np.sin(28 * v[:, :1]) * np.sin(28 * v[:, 1:2]) * np.sin(28 * v[:, 2:])),
                           s.faces, process=False)
    low = decimate(full, args.faces)
    uvm = unwrap(np.asarray(low.vertices, np.float32), np.asarray(low.faces), resolution=args.texture_size)
    texture = np.full((args.texture_size, args.texture_size, 3), 0.5, np.float32)
    print(f"write_asset: {len(full.faces)} faces decimated to {len(uvm.faces)}, texture {args.texture_size}^2")
    base = {"texture_size": args.texture_size, "height": 1.0, "normal_map": False, "weights": args.weights}
    for label, extra in (("placement only", {}), ("+ normal map", {"normal_map": True}),
                         ("quads + normals", {"normal_map": True, "remesh": "quad", "quad_faces": 5000}),
                         (f"+ pbr ({args.weights})", {"pbr": True})):
        best = float("inf")
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.monotonic()
                _, _, report = write_asset(Path(tmp), uvm, texture, "bench", {**base, **extra}, Emitter(), CancelToken(),
                                           full=full)
                best = min(best, time.monotonic() - start)
        print(f"{label:<18}{best:>8.2f} s   maps {', '.join(report['maps'])}")


if __name__ == "__main__":
    main()
