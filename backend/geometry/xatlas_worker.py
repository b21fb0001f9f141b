"""Runs xatlas in its own process, so that the caller can enforce a time limit by killing it.

Usage: ``python -m backend.geometry.xatlas_worker IN.npz OUT.npz RESOLUTION PADDING``; IN holds
``vertices`` float32 [V,3] and ``faces`` uint32 [F,3]; OUT receives xatlas's ``vmapping``
uint32 [V'], ``indices`` uint32 [F,3] and ``uvs`` float32 [V',2]. Imports only numpy and xatlas.
"""
import sys

import numpy as np
import xatlas


def main(argv: list[str]) -> None:
    src, dst, resolution, padding = argv[1], argv[2], int(argv[3]), int(argv[4])
    with np.load(src, allow_pickle=False) as data:
        vertices, faces = data["vertices"], data["faces"]
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = resolution
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    np.savez(dst, vmapping=vmapping.astype(np.uint32), indices=indices.astype(np.uint32), uvs=uvs.astype(np.float32))


if __name__ == "__main__":
    main(sys.argv)
