"""Cameras, and every convention conversion of the backend, in one place.

World space (DESIGN.md section 2): glTF's right-handed frame, +Y up, metres, the object's front
faces +Z. An orbit camera is given by

- elevation (degrees): positive looks down from above;
- azimuth (degrees): 0 is the front (+Z); positive turns counter-clockwise seen from above,
  so azimuth 90 stands on +X and looks at the side that is on the right in the front view;
- radius (metres) from the look-at target, and the vertical field of view ``fovy`` (degrees).

Camera-to-world matrices ``c2w`` use OpenGL camera axes (x right, y up, the camera looks
along -z), as NeRF ``transforms.json`` files and Blender camera objects do. The converters:

- :func:`w2c_opencv`: gsplat's ``viewmats`` (OpenCV camera axes: x right, y down, z forward);
- :func:`intrinsics`: the pinhole matrix ``K`` in pixels, principal point at the image centre,
  pixel centres at half-integers (gsplat's convention);
- :func:`projection_gl` / :func:`mvp_gl`: OpenGL clip space for nvdiffrast;
- :func:`blender_to_gltf` / :func:`gltf_to_blender`: Blender's Z-up world to glTF's Y-up world,
  (x, y, z)_blender -> (x, z, -y)_gltf, the inverse of the add-on's (x, y, z) -> (x, -z, y);
- :func:`load_transforms_json` / :func:`save_transforms_json`: NeRF-synthetic datasets, whose
  poses live in Blender's Z-up world;
- :func:`from_blender_camera` / :func:`to_blender_camera`: Blender camera objects
  (``matrix_world`` and lens) to and from :class:`Cameras`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

#: Blender world (Z up) -> glTF world (Y up): (x, y, z) -> (x, z, -y).
BLENDER_TO_GLTF = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
#: OpenGL camera axes <-> OpenCV camera axes (flip y and z); its own inverse.
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of pinhole cameras.

    Attributes:
        c2w: float32 [B, 4, 4], camera-to-world, OpenGL camera axes, glTF world, metres.
        fovy: float32 [B], vertical field of view in degrees, (0, 180).
        width, height: image size in pixels (shared by the batch).
    """

    c2w: torch.Tensor
    fovy: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.c2w.ndim == 2:
            self.c2w = self.c2w[None]
        self.fovy = torch.as_tensor(self.fovy, dtype=torch.float32, device=self.c2w.device).reshape(-1)
        if self.fovy.numel() == 1 and self.c2w.shape[0] > 1:
            self.fovy = self.fovy.expand(self.c2w.shape[0]).clone()
        if self.c2w.shape[1:] != (4, 4) or self.fovy.shape[0] != self.c2w.shape[0]:
            raise ValueError(f"c2w must be [B,4,4] with B fovy values, got {tuple(self.c2w.shape)} and {tuple(self.fovy.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        c2w = self.c2w[idx]
        fovy = self.fovy[idx]
        return Cameras(c2w if c2w.ndim == 3 else c2w[None], fovy.reshape(-1), self.width, self.height)

    def to(self, device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.fovy.to(device), self.width, self.height)

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras rendering ``width`` x ``height`` pixels (fovy kept)."""
        return Cameras(self.c2w, self.fovy, width, height)

    @property
    def centers(self) -> torch.Tensor:
        """Camera positions, float32 [B, 3]."""
        return self.c2w[:, :3, 3]

    @property
    def viewmats(self) -> torch.Tensor:
        """gsplat's world-to-camera matrices (OpenCV axes), float32 [B, 4, 4]."""
        return w2c_opencv(self.c2w)

    @property
    def Ks(self) -> torch.Tensor:
        """Intrinsics in pixels, float32 [B, 3, 3]."""
        return intrinsics(self.fovy, self.width, self.height)

    @staticmethod
    def cat(items: Sequence["Cameras"]) -> "Cameras":
        return Cameras(torch.cat([c.c2w for c in items]), torch.cat([c.fovy for c in items]), items[0].width, items[0].height)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: Sequence[float] = (0.0, 1.0, 0.0)) -> torch.Tensor:
    """Camera-to-world (OpenGL axes) of cameras at ``eye`` looking at ``target``.

    Args:
        eye, target: float [B, 3] (or [3]) in world units.
        up: the world direction that appears up in the image; when the view direction is
            (nearly) parallel to it, world -Z (looking down) or +Z (looking up) is used.
    Returns:
        float32 [B, 4, 4].
    """
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=torch.float32, device=eye.device).reshape(-1, 3).expand_as(eye)
    up_t = torch.as_tensor(up, dtype=torch.float32, device=eye.device).reshape(1, 3).expand_as(eye)
    back = torch.nn.functional.normalize(eye - target, dim=-1)  # camera +z points away from the target
    right = torch.linalg.cross(up_t, back)
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        # Straight above (or below): keep the image's up towards world -Z (the back), so the
        # front of the object is at the bottom of a top view, as Blender's top view shows it.
        alt = torch.tensor([0.0, 0.0, -1.0], device=eye.device).expand_as(eye)
        alt = torch.where((back[:, 1:2] < 0), -alt, alt)
        right = torch.where(degenerate[:, None], torch.linalg.cross(alt, back), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    true_up = torch.linalg.cross(back, right)
    c2w = torch.zeros(eye.shape[0], 4, 4, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_positions(elevation, azimuth, radius, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """World positions of orbit cameras, float32 [B, 3]. Angles in degrees (see module doc)."""
    el = torch.deg2rad(torch.as_tensor(elevation, dtype=torch.float32).reshape(-1))
    az = torch.deg2rad(torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1))
    r = torch.as_tensor(radius, dtype=torch.float32).reshape(-1)
    el, az, r = torch.broadcast_tensors(el, az, r)
    pos = torch.stack([r * torch.cos(el) * torch.sin(az), r * torch.sin(el), r * torch.cos(el) * torch.cos(az)], -1)
    return pos + torch.as_tensor(target, dtype=torch.float32).reshape(1, 3)


def orbit_cameras(elevation, azimuth, radius, fovy: float, width: int, height: int, target=(0.0, 0.0, 0.0)) -> Cameras:
    """Orbit cameras looking at ``target``. ``elevation``/``azimuth`` in degrees, broadcast."""
    eye = orbit_positions(elevation, azimuth, radius, target)
    return Cameras(look_at(eye, torch.as_tensor(target, dtype=torch.float32).expand_as(eye)), torch.full((eye.shape[0],), float(fovy)), width, height)


def orbit_angles(cameras: Cameras, target=(0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The orbit coordinates of camera positions around ``target``: (elevation degrees [B],
    azimuth degrees in (-180, 180] [B], radius metres [B]); the inverse of :func:`orbit_positions`."""
    d = cameras.centers - torch.as_tensor(target, dtype=torch.float32, device=cameras.c2w.device)
    r = d.norm(dim=-1).clamp_min(1e-12)
    el = torch.rad2deg(torch.asin((d[:, 1] / r).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(d[:, 0], d[:, 2]))
    return el, az, r


def nearest_view(elevation: torch.Tensor, azimuth: torch.Tensor, ref_elevation: torch.Tensor,
                 ref_azimuth: torch.Tensor) -> torch.Tensor:
    """For each orbit direction (elevation, azimuth) the index of the nearest of some reference
    directions, by the great-circle angle between them (cos d = sin el sin el_k + cos el cos el_k
    cos(az - az_k)); ties go to the lower index, the front first (``torch.argmax`` returns the
    first maximal index).

    Args:
        elevation, azimuth: float [B], degrees.
        ref_elevation, ref_azimuth: float [K], degrees.
    Returns:
        int64 [B] in [0, K).
    """
    el, az = torch.deg2rad(elevation.float().reshape(-1, 1)), torch.deg2rad(azimuth.float().reshape(-1, 1))
    rel = torch.deg2rad(torch.as_tensor(ref_elevation, dtype=torch.float32, device=el.device).reshape(1, -1))
    raz = torch.deg2rad(torch.as_tensor(ref_azimuth, dtype=torch.float32, device=el.device).reshape(1, -1))
    cos_d = torch.sin(el) * torch.sin(rel) + torch.cos(el) * torch.cos(rel) * torch.cos(az - raz)
    return torch.argmax(cos_d, dim=1)


def sample_orbit_cameras(
    n: int,
    elevation_range: tuple[float, float],
    azimuth_range: tuple[float, float],
    radius_range: tuple[float, float],
    fovy: float,
    width: int,
    height: int,
    generator: torch.Generator | None = None,
) -> tuple[Cameras, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random orbit cameras, uniform in each range (degrees, degrees, metres).

    Returns:
        (cameras, elevation [n], azimuth [n], radius [n]).
    """
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    el, az, r = uniform(*elevation_range), uniform(*azimuth_range), uniform(*radius_range)
    return orbit_cameras(el, az, r, fovy, width, height), el, az, r


class DebiasedAzimuths:
    """Azimuths of SDS views with DTC123's camera de-biasing as this project reads it (Yi et al.
    2024 name "camera pose de-biasing" without a formula; ``docs/methods.md``): the views widen
    from the reference view to the whole orbit over the first ``widen_steps`` steps, and every
    block of ``block`` consecutive steps visits each of ``block`` equal sectors of the current
    range once, in a random order, at a uniform point inside it (stratified sampling: no side is
    over- or under-visited, which plain uniform draws do over a few hundred steps).

    Args:
        block: steps per block (sectors of the circle), >= 1.
        start_half_width: half the azimuth range at step 1, degrees in (0, 180].
        widen_steps: steps over which the half-width grows linearly to 180 (0: the whole orbit
            from the start).
        generator: the job's generator (the sector order and the points in them).
    Raises:
        ValueError: ``block`` < 1 or ``start_half_width`` outside (0, 180].

    Call with the 1-based step: returns the azimuth in degrees, in [-half, half] around the
    reference view (azimuth 0).
    """

    def __init__(self, block: int = 8, start_half_width: float = 45.0, widen_steps: int = 0,
                 generator: torch.Generator | None = None):
        if block < 1 or not 0.0 < start_half_width <= 180.0:
            raise ValueError(f"need block >= 1 and 0 < start_half_width <= 180, got {block} and {start_half_width}")
        self.block, self.start, self.widen, self.generator = block, float(start_half_width), int(widen_steps), generator
        self._order: list[int] = []
        self._block_index = -1

    def half_width(self, step: int) -> float:
        """Half the azimuth range at ``step``, degrees."""
        if self.widen <= 0:
            return 180.0
        return self.start + (180.0 - self.start) * min(max(step - 1, 0) / self.widen, 1.0)

    def __call__(self, step: int) -> float:
        """The azimuth of a step with one view."""
        return float(self.sample(step, 1)[0])

    def sample(self, step: int, n: int = 1) -> torch.Tensor:
        """The ``n`` azimuths of a step with ``n`` views, float64 [n] in degrees: draw j of step
        s is the ((s - 1) n + j)-th of the stratified sequence (a block of sectors spans
        ``block / n`` steps), all within the step's half-width."""
        half = self.half_width(step)
        out = []
        for j in range(n):
            index, slot = divmod(max(step - 1, 0) * n + j, self.block)
            if index != self._block_index:
                self._order = torch.randperm(self.block, generator=self.generator).tolist()
                self._block_index = index
            u = float(torch.rand((), generator=self.generator))
            out.append(-half + 2.0 * half * (self._order[slot] + u) / self.block)
        return torch.tensor(out, dtype=torch.float64)


@dataclass
class OrbitSampler:
    """The random cameras of one score-distillation step, every method's one sampler: ``batch``
    orbit views at ``radius`` metres with vertical field of view ``fovy`` degrees, elevations
    uniform in ``elevation_range`` (degrees), azimuths uniform over the circle or from
    ``azimuths`` (e.g. :class:`DebiasedAzimuths`), all drawn from ``generator``.

    Call with the 1-based step and the render side in pixels: returns :class:`Cameras` of
    ``batch`` views (on ``device`` when given).
    """

    batch: int
    elevation_range: tuple[float, float]
    radius: float
    fovy: float
    generator: torch.Generator | None = None
    azimuths: DebiasedAzimuths | None = None
    device: str | torch.device | None = None

    def __call__(self, step: int, side: int) -> Cameras:
        if self.azimuths is None:
            cams = sample_orbit_cameras(self.batch, self.elevation_range, (-180.0, 180.0), (self.radius, self.radius),
                                        self.fovy, side, side, generator=self.generator)[0]
        else:
            lo, hi = self.elevation_range
            el = lo + (hi - lo) * torch.rand(self.batch, generator=self.generator)
            cams = orbit_cameras(el, self.azimuths.sample(step, self.batch), self.radius, self.fovy, side, side)
        return cams if self.device is None else cams.to(self.device)


def look_at_point(cameras: Cameras) -> torch.Tensor:
    """The point the cameras look at: the least-squares intersection of their optical axes,
    float32 [3] (for orbit rigs, the orbit centre)."""
    centres = cameras.centers
    dirs = -cameras.c2w[:, :3, 2]
    A = torch.eye(3, device=centres.device)[None] - dirs[:, :, None] * dirs[:, None, :]
    return torch.linalg.lstsq(A.sum(0), (A @ centres[:, :, None]).sum(0)).solution[:, 0]


def w2c_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrices with OpenCV camera axes (gsplat ``viewmats``), [B, 4, 4]."""
    return torch.linalg.inv(c2w @ GL_TO_CV.to(c2w))


def focal_from_fovy(fovy_deg, height: int) -> torch.Tensor:
    """Focal length in pixels: f = (H / 2) / tan(fovy / 2)."""
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)))


def intrinsics(fovy_deg, width: int, height: int) -> torch.Tensor:
    """Pinhole intrinsics [B, 3, 3] (square pixels; principal point at the image centre)."""
    f = focal_from_fovy(fovy_deg, height).reshape(-1)
    K = torch.zeros(f.shape[0], 3, 3, device=f.device)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return K


def projection_gl(fovy_deg, aspect: float, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """OpenGL perspective projection [B, 4, 4] (clip space, NDC z in [-1, 1]), for nvdiffrast.
    Note: nvdiffrast's image row 0 is at clip y = -1 (the bottom); flip rows to get row 0 at
    the top, as :mod:`backend.render.mesh` does."""
    t = torch.tan(0.5 * torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32))).reshape(-1)
    P = torch.zeros(t.shape[0], 4, 4, device=t.device)
    P[:, 0, 0] = 1.0 / (t * aspect)
    P[:, 1, 1] = 1.0 / t
    P[:, 2, 2] = -(far + near) / (far - near)
    P[:, 2, 3] = -2.0 * far * near / (far - near)
    P[:, 3, 2] = -1.0
    return P


def mvp_gl(cameras: Cameras, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """Model-view-projection [B, 4, 4]: world -> OpenGL clip space."""
    return projection_gl(cameras.fovy, cameras.width / cameras.height, near, far).to(cameras.c2w) @ torch.linalg.inv(cameras.c2w)


def blender_to_gltf(m: torch.Tensor) -> torch.Tensor:
    """Change the world frame of points [..., 3] or of c2w matrices [..., 4, 4] from
    Blender's Z-up to glTF's Y-up. Camera axes (OpenGL) are unchanged."""
    R = BLENDER_TO_GLTF.to(m)
    if m.shape[-2:] == (4, 4):
        out = m.clone()
        out[..., :3, :] = R @ m[..., :3, :]
        return out
    return m @ R.T


def gltf_to_blender(m: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`blender_to_gltf`: (x, y, z)_gltf -> (x, -z, y)_blender."""
    R = BLENDER_TO_GLTF.T.to(m)
    if m.shape[-2:] == (4, 4):
        out = m.clone()
        out[..., :3, :] = R @ m[..., :3, :]
        return out
    return m @ R.T


def from_blender_camera(matrix_world, lens_mm: float, sensor_width_mm: float, width: int, height: int,
                        sensor_fit: str = "AUTO") -> Cameras:
    """A Blender camera object (``matrix_world``, 4x4, Z-up world) as :class:`Cameras`.

    Blender's ``sensor_fit`` AUTO fits the sensor to the larger image side.
    """
    c2w = blender_to_gltf(torch.as_tensor(np.asarray(matrix_world), dtype=torch.float32).reshape(1, 4, 4))
    fit_width = sensor_fit == "HORIZONTAL" or (sensor_fit == "AUTO" and width >= height)
    if fit_width:
        fovx = 2.0 * math.atan(sensor_width_mm / (2.0 * lens_mm))
        fovy = 2.0 * math.atan(math.tan(fovx / 2.0) * height / width)
    else:
        fovy = 2.0 * math.atan(sensor_width_mm / (2.0 * lens_mm))
    return Cameras(c2w, torch.tensor([math.degrees(fovy)]), width, height)


def to_blender_camera(cameras: Cameras, sensor_width_mm: float = 36.0) -> list[tuple[np.ndarray, float]]:
    """Each camera as a Blender camera object: (``matrix_world`` float32 4x4 in Blender's Z-up
    world, ``lens`` in mm for a sensor of ``sensor_width_mm`` with sensor fit AUTO). The
    inverse of :func:`from_blender_camera`."""
    c2w = gltf_to_blender(cameras.c2w.detach().cpu())
    out = []
    for i in range(len(cameras)):
        fovy = math.radians(float(cameras.fovy[i]))
        if cameras.width >= cameras.height:  # AUTO fits the sensor width to the image width
            fov = 2.0 * math.atan(math.tan(fovy / 2.0) * cameras.width / cameras.height)
        else:
            fov = fovy
        out.append((c2w[i].numpy(), sensor_width_mm / (2.0 * math.tan(fov / 2.0))))
    return out


def fovx_to_fovy(fovx_rad: float, width: int, height: int) -> float:
    """Horizontal field of view (radians) to vertical field of view (degrees)."""
    return math.degrees(2.0 * math.atan(math.tan(fovx_rad / 2.0) * height / width))


def load_transforms_json(path: str | Path, width: int, height: int) -> tuple[Cameras, list[Path]]:
    """Read a NeRF-synthetic ``transforms.json``.

    Args:
        path: the JSON file; ``frames[].file_path`` are relative to its folder (a missing
            extension means ``.png``).
        width, height: the resolution the images will be used at.
    Returns:
        (cameras in the glTF world, image paths).
    Raises:
        ValueError: missing ``camera_angle_x`` or frames, or a matrix that is not 4x4.
        FileNotFoundError: an image file is missing.
    """
    path = Path(path)
    meta = json.loads(path.read_text())
    if "camera_angle_x" not in meta or not meta.get("frames"):
        raise ValueError(f"{path}: a transforms.json needs 'camera_angle_x' and a non-empty 'frames' list")
    c2ws, files = [], []
    for i, frame in enumerate(meta["frames"]):
        m = np.asarray(frame.get("transform_matrix"), dtype=np.float32)
        if m.shape != (4, 4):
            raise ValueError(f"{path}: frames[{i}].transform_matrix must be 4x4, got shape {m.shape}")
        image = path.parent / frame["file_path"]
        if not image.suffix:
            image = image.with_suffix(".png")
        if not image.is_file():
            raise FileNotFoundError(f"{path}: frames[{i}] image {image} does not exist")
        c2ws.append(m)
        files.append(image)
    c2w = blender_to_gltf(torch.from_numpy(np.stack(c2ws)))
    fovy = fovx_to_fovy(float(meta["camera_angle_x"]), width, height)
    return Cameras(c2w, torch.full((len(files),), fovy), width, height), files


def save_transforms_json(path: str | Path, cameras: Cameras, file_paths: Sequence[str]) -> None:
    """Write cameras (glTF world) as a NeRF-synthetic ``transforms.json`` (Blender world)."""
    fovy = math.radians(float(cameras.fovy[0]))
    fovx = 2.0 * math.atan(math.tan(fovy / 2.0) * cameras.width / cameras.height)
    c2w = gltf_to_blender(cameras.c2w.detach().cpu())
    frames = [{"file_path": fp, "transform_matrix": c2w[i].tolist()} for i, fp in enumerate(file_paths)]
    Path(path).write_text(json.dumps({"camera_angle_x": fovx, "frames": frames}, indent=2))
