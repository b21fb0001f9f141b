"""Several reference images of one object (front, back, sides): the view syntax, the recentring at
one scale, the submit checks, the reference losses at every view, Zero-1-to-3 conditioned on the
nearest reference, every image-conditioned method with two images, and the CLI through a real
server. The prior-oracle acceptance runs are in ``test_multi_reference_acceptance.py``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cameras import orbit_cameras
from backend.contracts import Emitter
from backend.images import object_box, recenter_views
from backend.jobs import JobStore
from backend.pipelines import REGISTRY, load_builtin
from backend.pipelines.base import ParamError
from backend.render.mesh import render_mesh
from backend.worker import run_local
from conftest import JOB_CEILING, cli
from scenes import make_test_object
from shared_protocol.views import NAMED_VIEWS, ViewError, parse_view

IMAGE_METHODS = ("dreamgaussian", "dreamtime", "dtc123", "dreamcraft3d", "im3d")


def _render_rgba(mesh, elevation: float, azimuth: float, radius: float, size: int) -> np.ndarray:
    with torch.no_grad():
        out = render_mesh(mesh, orbit_cameras(elevation, azimuth, radius, 49.1, size, size), background=1.0)
    rgb = (out.rgb[0].clamp(0, 1) * 255).round().byte().numpy()
    alpha = ((out.alpha[0, ..., 0] > 0.5) * 255).byte().numpy()
    return np.concatenate([rgb, alpha[..., None]], -1)


@pytest.fixture(scope="module")
def photos():
    """The test object photographed from the front at 2 m (256 px), the back at 3 m (200 px), the
    left at 2.5 m (320 px) and from above at 2 m: different distances and resolutions, as a
    phone's would be."""
    mesh, _ = make_test_object(texture_size=256)
    return mesh, {"front": _render_rgba(mesh, 0, 0, 2.0, 256), "back": _render_rgba(mesh, 0, 180, 3.0, 200),
                  "left": _render_rgba(mesh, 0, 90, 2.5, 320), "top": _render_rgba(mesh, 90, 0, 2.0, 256)}


def test_views_are_written_as_azimuth_elevation_or_a_name():
    assert parse_view("180") == (180.0, 0.0)
    assert parse_view("90,10") == (90.0, 10.0)
    assert parse_view(" -45.5 , -20 ") == (-45.5, -20.0)
    assert parse_view("Back") == NAMED_VIEWS["back"] == (180.0, 0.0)
    assert parse_view("left") == (90.0, 0.0) and parse_view("right") == (-90.0, 0.0) and parse_view("top") == (0.0, 90.0)
    for text, words in (("abc", "neither AZIMUTH"), ("400", "azimuth 400"), ("10,95", "elevation 95"), ("1,2,3", "neither"),
                        ("", "neither")):
        with pytest.raises(ViewError, match=words) as caught:
            parse_view(text)
        assert str(caught.value).count(". ") == 0  # one sentence


def test_the_views_are_recentred_at_the_fronts_scale(photos):
    """Photos taken from other distances and at other resolutions come out with the object as
    tall as in the front (within 2 px of 128), and the view from above as wide as the front."""
    _, shots = photos
    front_alone = recenter_views([shots["front"]], [0.0], 128)[0][0]
    out, reports = recenter_views([shots["front"], shots["back"], shots["left"], shots["top"]], [0, 0, 0, 90], 128)
    assert np.array_equal(out[0], front_alone)  # the front is recentred as a single reference is
    boxes = [object_box(image) for image in out]
    heights = [y1 - y0 for y0, y1, _, _ in boxes]
    widths = [x1 - x0 for _, _, x0, x1 in boxes]
    assert abs(heights[1] - heights[0]) <= 2 and abs(heights[2] - heights[0]) <= 2, heights
    assert abs(widths[3] - widths[0]) <= 2, widths
    assert [r["matched"] for r in reports] == ["front", "height", "height", "width"] and all(r["fits"] for r in reports)
    # The object is centred in every view.
    for y0, y1, x0, x1 in boxes:
        assert abs((y0 + y1) / 2 - 64) <= 1.5 and abs((x0 + x1) / 2 - 64) <= 1.5


def _inputs(shots, views=((180, 0),), names=("back",)) -> dict:
    inputs = {"image": shots["front"]}
    for k, name in enumerate(names, 1):
        inputs[f"image_{k}"] = shots[name]
    inputs["reference_views"] = np.array(views, np.float32)
    return inputs


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_image_method_checks_the_further_views_at_submit(method, photos):
    _, shots = photos
    cls = load_builtin()[method]
    base = {"mode": "image"} if "mode" in cls.params else {}
    cls.resolve("tiny", base, _inputs(shots))  # a good request
    bad = {
        "no views": ({"image": shots["front"], "image_1": shots["back"]}, "without 'reference_views'"),
        "a gap": ({"image": shots["front"], "image_1": shots["back"], "image_3": shots["left"],
                   "reference_views": np.array([[180, 0], [90, 0]], np.float32)}, "without gaps"),
        "rows": (_inputs(shots, ((180, 0), (90, 0))), "2 rows but 1 further"),
        "azimuth": (_inputs(shots, ((400, 0),)), "azimuth 400"),
        "elevation": (_inputs(shots, ((180, -91),)), "elevation -91"),
        "mask": ({**_inputs(shots), "mask_1": np.zeros((10, 10), np.uint8)}, "a mask must be the size of its image"),
        "lone mask": ({"image": shots["front"], "mask_2": np.zeros((10, 10), np.uint8)}, "without 'image_2'"),
        "nine": ({"image": shots["front"], **{f"image_{k}": shots["back"] for k in range(1, 8)},
                  "reference_views": np.zeros((8, 2), np.float32)}, "at most 8"),
    }
    for name, (inputs, words) in bad.items():
        with pytest.raises(ParamError, match=words) as caught:
            cls.resolve("tiny", base, inputs)
        assert "\n" not in str(caught.value), name
    if "mode" in cls.params and "text" in cls.params["mode"].choices:
        with pytest.raises(ParamError, match="image mode"):
            cls.resolve("tiny", {"mode": "text", "prompt": "a cat"}, _inputs(shots))
    # The memory estimate grows with the number of images.
    one = sum(cls.estimate_memory(cls.resolve("tiny", base, {"image": shots["front"]})[1], {"image": shots["front"]}).values())
    three = _inputs(shots, ((180, 0), (90, 0)), ("back", "left"))
    assert sum(cls.estimate_memory(cls.resolve("tiny", base, three)[1], three).values()) > one


def test_the_reference_views_share_the_single_views_weight():
    """The reference losses of two views are the mean of each view's own (the depth correlation
    taken per view), so the views together weigh what one does against the SDS term."""
    from backend.render.gaussians import RenderOutput
    from backend.stages.gaussians import reference_view_loss

    g = torch.Generator().manual_seed(0)
    rgb, alpha, depth = torch.rand(2, 16, 16, 3, generator=g), torch.rand(2, 16, 16, 1, generator=g), torch.rand(2, 16, 16, 1, generator=g) + 1
    ref = {"rgb": torch.rand(2, 3, 16, 16, generator=g), "alpha": (torch.rand(2, 1, 16, 16, generator=g) > 0.3).float(),
           "disparity": torch.rand(2, 1, 16, 16, generator=g)}
    both = reference_view_loss(RenderOutput(rgb, alpha, depth, {}), ref, 10.0, 3.0, 0.5)
    single = [reference_view_loss(RenderOutput(rgb[i:i + 1], alpha[i:i + 1], depth[i:i + 1], {}),
                                  {k: v[i:i + 1] for k, v in ref.items()}, 10.0, 3.0, 0.5) for i in range(2)]
    assert torch.allclose(both, (single[0] + single[1]) / 2, rtol=1e-5)
    assert not torch.allclose(single[0], single[1], rtol=1e-2)  # the two views do differ


def test_zero123_conditions_each_view_on_the_nearest_reference(photos):
    """With a front and a back reference, a view near the back is denoised exactly as by a teacher
    that was given the back alone (the relative camera from the back), and a view near the front
    as with the front alone."""
    from backend.guidance import load_teacher
    from backend.images import to_white_background

    _, shots = photos
    front, back = (torch.from_numpy(to_white_background(recenter_views([shots[n]], [0.0], 64)[0][0])[0]).permute(2, 0, 1)[None]
                   for n in ("front", "back"))
    both = load_teacher("zero123", "tiny")
    both.encode_condition(image=torch.cat([front, back]), elevation=[0.0, 0.0], azimuth=[0.0, 180.0], radius=2.0)
    g = torch.Generator().manual_seed(3)
    cams = orbit_cameras(torch.tensor([5.0, -10.0, 20.0]), torch.tensor([160.0, -20.0, -150.0]), 2.0, 49.1, 64, 64)
    x_t = torch.randn(3, *both.condition["latents"].shape[1:], generator=g)
    t = torch.tensor([500, 500, 500])
    eps = both.predict_noise(x_t, t, cams, None)
    alone = load_teacher("zero123", "tiny")
    for image, azimuth, rows in ((back, 180.0, [0, 2]), (front, 0.0, [1])):
        alone.encode_condition(image=image, elevation=0.0, azimuth=azimuth, radius=2.0)
        expected = alone.predict_noise(x_t[rows], t[rows], cams[rows], None)
        assert torch.allclose(eps[rows], expected, atol=1e-5)
    alone.encode_condition(image=front, elevation=0.0, azimuth=0.0, radius=2.0)
    assert not torch.allclose(eps[[0]], alone.predict_noise(x_t[[0]], t[[0]], cams[[0]], None), atol=1e-3)


@pytest.mark.slow
def test_every_image_method_runs_tiny_with_two_images(tmp_path, photos):
    """Each image-conditioned method, tiny, front and back: both references written, counted in the
    result, and IM-3D fits the given views beside its generated ones."""
    _, shots = photos
    store = JobStore(tmp_path / "jobs")
    for method in IMAGE_METHODS:
        cls = REGISTRY[method]
        params = {"mode": "image"} if "mode" in cls.params else {}
        job, result = run_local(store, cls, "tiny", params, _inputs(shots), 0, Emitter())
        assert result.meta["references"] == 2, method
        assert (job.dir / "reference.png").is_file() and (job.dir / "reference_1.png").is_file(), method
        assert {"reference.png", "reference_1.png"} <= set(result.files), method
        back = np.asarray(Image.open(job.dir / "reference_1.png"))
        front = np.asarray(Image.open(job.dir / "reference.png"))
        assert abs((object_box(back)[1] - object_box(back)[0]) - (object_box(front)[1] - object_box(front)[0])) <= 2
        if method == "im3d":
            assert result.meta["fitted_views"] == result.meta["views"] + 2


@pytest.mark.slow
def test_the_cli_form_through_a_real_server(tmp_path, photos, make_server):
    """``--image front.png --image back.png@180 --image left.png@90,10`` on a running server, and
    malformed views refused with one sentence before anything is sent."""
    _, shots = photos
    for name in ("front", "back", "left"):
        Image.fromarray(shots[name]).save(tmp_path / f"{name}.png")
    server = make_server(pipelines=load_builtin())
    address = server.endpoint.replace("tcp://", "")
    out = tmp_path / "out" / "asset.glb"
    done = cli("generate", "--image", tmp_path / "front.png", "--image", f"{tmp_path / 'back.png'}@180",
               "--image", f"{tmp_path / 'left.png'}@90,10", "--preset", "tiny", "--server", address, "--out", out)
    assert done.exit_code == 0, done.output
    assert out.is_file()
    job_dir = next(p for p in (tmp_path / "jobs").iterdir() if (p / "result.json").is_file())
    views = np.load(job_dir / "inputs.npz")["reference_views"]
    assert views.tolist() == [[180.0, 0.0], [90.0, 10.0]]
    assert json.loads((job_dir / "result.json").read_text())["meta"]["references"] == 3
    for view, words in (("@abc", "neither AZIMUTH"), ("@400", "azimuth 400"), ("@90,91", "elevation 91")):
        bad = cli("generate", "--image", tmp_path / "front.png", "--image", f"{tmp_path / 'back.png'}{view}",
                  "--preset", "tiny", "--server", address, "--out", out)
        assert bad.exit_code == 1 and words in bad.output and "Traceback" not in bad.output, bad.output
        assert bad.output.strip().count("\n") == 0, bad.output
    nine = cli("generate", *[a for k in range(9) for a in ("--image", f"{tmp_path / 'front.png'}@{k * 10}")],
               "--preset", "tiny", "--server", address, "--out", out)
    assert nine.exit_code == 1 and "at most 8" in nine.output, nine.output
    # The server keeps serving after the refusals, and checks a raw submit the same way.
    from shared_protocol.client import Client, ClientError

    with Client(server.endpoint) as client:
        with pytest.raises(ClientError, match="azimuth 400") as caught:
            client.wait(client.submit("dreamgaussian", preset="tiny", params={"mode": "image"}, inputs={
                "image": shots["front"], "image_1": shots["back"],
                "reference_views": np.array([[400.0, 0.0]], np.float32)}), timeout=JOB_CEILING)
        assert caught.value.code == "bad_params"
        assert client.ping(timeout=30) >= 0
