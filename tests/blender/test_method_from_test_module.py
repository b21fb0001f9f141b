"""Acceptance of the architecture (issue 12): a method defined only here, composing the shared
stages, is served by a real ``splatsmith serve --plugin`` of this module, listed by the Blender
panel with its own parameters, and run both from ``splatsmith generate --pipeline`` and from the
panel in real Blender. Nothing outside this file names it.

The module stays importable without bpy (the server imports it as a plugin and must never load
Blender): bpy and the add-on are imported by fixtures. torch loads inside ``run`` only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.pipelines.base import InputSpec, Param, Pipeline, Result, grouped, register
from panel_layout import PanelLayout as _Layout

HUES = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.75, 0.15), "blue": (0.1, 0.2, 0.85)}

try:  # the suite's ceiling; the server imports this module as a plugin, outside pytest
    from conftest import JOB_CEILING  # noqa: E402
except ImportError:
    JOB_CEILING = None


@register
class SwatchPipeline(Pipeline):
    """A ball of Gaussians whose colour is optimised towards one hue from orbiting views, then
    exported as a textured mesh: the smallest method built from the stages (Gaussian
    optimisation with a reference loss, mesh export, preview pacing)."""

    name = "swatch"
    title = "Swatch (test method)"
    works_on = ("prompt",)
    params = grouped({
        "prompt": Param("str", "", "a name for the result", max_len=100),
        "hue": Param("choice", "red", "the colour the ball is fitted to", choices=tuple(HUES)),
        "blob_count": Param("int", 1500, "Gaussians in the ball", min=200, max=20_000),
        "steps": Param("int", 12, "colour-fitting steps", min=1, max=1000),
        "blob_radius": Param("float", 0.4, "radius of the ball, metres", min=0.1, max=1.0),
        "lr_colors": Param("float", 0.5, "colour learning rate", min=0.0, max=1.0),
        "mesh_resolution": Param("int", 40, "density grid for marching cubes", min=16, max=128),
        "texture_size": Param("int", 64, "texture side, texels", min=32, max=512),
    }, groups={"input": ("prompt", "hue"), "gaussians": ("blob_count", "steps", "blob_radius", "lr_colors"),
               "mesh": ("mesh_resolution",), "texture": ("texture_size",)},
        basic=("prompt", "hue", "blob_count"))
    presets = {"default": {}, "small": {"blob_count": 600, "steps": 10}}
    inputs: dict[str, InputSpec] = {}

    def run(self, request, emit, cancel):
        import torch

        from backend.cameras import orbit_cameras, sample_orbit_cameras
        from backend.render.gaussians import GaussianModel, render
        from backend.stages.gaussians import preview_gaussians, reference_view_loss, step_optimizers
        from backend.stages.asset_output import write_asset
        from backend.stages.mesh_export import export_mesh, orbit_bake_cameras, render_bake_views
        from backend.geometry.uv import bake_texture
        from backend.stages.progress import PreviewThrottle

        p = request.params
        gen = torch.Generator().manual_seed(request.seed)
        model = GaussianModel.init_sphere(p["blob_count"], p["blob_radius"], 0.9, 0, gen)
        optimizers = model.parameter_groups({"sh0": p["lr_colors"]})
        hue = torch.tensor(HUES[p["hue"]]).view(1, 3, 1, 1)
        previews = PreviewThrottle()
        for step in range(1, p["steps"] + 1):
            cancel.check()
            cams, _, _, _ = sample_orbit_cameras(1, (-30.0, 30.0), (-180.0, 180.0), (2.0, 2.0), 49.1, 48, 48, generator=gen)
            out = render(model, cams, background=1.0)
            alpha = out.alpha.permute(0, 3, 1, 2).detach()
            target = {"rgb": alpha * hue + (1 - alpha), "alpha": alpha}
            loss = reference_view_loss(out, target, 1.0, 0.0)
            loss.backward()
            step_optimizers(optimizers)
            emit.progress("gaussians", step, p["steps"], loss.item())
            if previews.due(step, p["steps"]):
                emit.preview("gaussians", preview_gaussians(model), {"step": step})
        bake_cams = orbit_bake_cameras(2.0, 49.1, 64)

        def bake(uvm):
            colour, alpha = render_bake_views(model, bake_cams, cancel)
            return bake_texture(uvm, bake_cams, colour, alpha, size=p["texture_size"], cancel=cancel)[0]

        exported = export_mesh(model, bake, resolution=p["mesh_resolution"], density_threshold=1.0, max_faces=5000,
                               calibration_cameras=orbit_cameras([0.0, 60.0], [0.0, 90.0], 2.0, 49.1, 64, 64),
                               texture_size=p["texture_size"], unwrap_time_limit=120.0, emit=emit, cancel=cancel)
        files, arrays, output = write_asset(request.job_dir, exported.uvm, exported.texture, "swatch", p, emit, cancel,
                                            full=exported.extracted.full)
        return Result(files=files, arrays=arrays, meta={"faces": int(len(exported.uvm.faces)), "hue": p["hue"],
                                                        "output": output})


PIPELINES = {SwatchPipeline.name: SwatchPipeline}
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="module")
def swatch_server(tmp_path_factory):
    """A real backend serving this module's method (``--plugin``), at HOST:PORT."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import free_port
    from shared_protocol.client import Client, ClientError

    root = tmp_path_factory.mktemp("swatch")
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--bind", address, "--device", "cpu",
                             "--output-dir", str(root / "jobs"), "--plugin", Path(__file__).stem,
                             "--allow-oracle", str(root / "oracle")], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 300  # a ceiling against hangs
    while True:
        assert proc.poll() is None, (root / "serve.log").read_text()
        try:
            with Client(address) as probe:
                probe.ping(timeout=1.0)
            break
        except ClientError:
            assert time.monotonic() < end, "the backend did not start"
    yield address, root / "jobs"
    proc.terminate()
    proc.wait(30)
    log.close()


def _glb_texture_mean(path: Path) -> np.ndarray:
    import trimesh

    mesh = next(iter(trimesh.load(path).geometry.values()))
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    used = texture[texture.max(-1) > 0.02]  # texels the bake reached
    return used.mean(0)


@pytest.mark.slow
def test_the_cli_lists_and_runs_the_test_method(swatch_server, tmp_path):
    from typer.testing import CliRunner

    from backend.cli import app

    address, _ = swatch_server
    runner = CliRunner()
    shown = runner.invoke(app, ["pipelines", "swatch", "--server", address], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "blob_count" in shown.output and "red | green | blue" in shown.output, shown.output
    made = runner.invoke(app, ["generate", "--pipeline", "swatch", "--server", address, "--preset", "small",
                               "--param", "hue=green", "--param", "prompt=a green ball", "--out", str(tmp_path / "g.glb")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "g.glb").stat().st_size > 0
    r, g, b = _glb_texture_mean(tmp_path / "g.glb")
    assert g > r + 0.2 and g > b + 0.2, (r, g, b)  # the parameter reached the method
    bad = runner.invoke(app, ["generate", "--pipeline", "swatch", "--server", address, "--param", "hue=purple"])
    assert bad.exit_code == 1 and "is not one of red, green, blue" in bad.output


@pytest.fixture
def blender_addon_connected(swatch_server):
    bpy = pytest.importorskip("bpy")
    import blender_addon
    from blender_addon import client_glue

    bpy.ops.wm.read_homefile(use_empty=True)
    blender_addon.register()
    try:
        assert bpy.ops.splatsmith.connect(address=swatch_server[0]) == {"FINISHED"}
        yield bpy, client_glue
    finally:
        blender_addon.unregister()


def test_the_panel_draws_the_test_methods_parameters_and_runs_it(blender_addon_connected, swatch_server):
    bpy, client_glue = blender_addon_connected
    from blender_addon import panels, params, properties

    settings = bpy.context.scene.splatsmith
    listed = {item[0] for item in properties._pipeline_items(settings, bpy.context)}  # what Blender's menu shows
    assert {"swatch", "dreamgaussian", "texture_refine", "reconstruct"} <= listed
    settings.pipeline = "swatch"
    assert settings.pipeline == "swatch"
    # Its own parameters, with the server's ranges, help and choices.
    ui = settings.id_properties_ui("swatch.blob_count").as_dict()
    assert (ui["min"], ui["max"], settings["swatch.blob_count"]) == (200, 20_000, 1500)
    assert ui["description"] == "Gaussians in the ball"
    assert [i[0] for i in settings.id_properties_ui("swatch.hue").as_dict()["items"]] == ["red", "green", "blue"]
    # Basic ones in the panel, the rest under Advanced, grouped.
    log: list = []
    settings.show_advanced = False
    panels.draw_method(_Layout(log), settings, None)
    drawn = [entry[1] for entry in log if entry[0] == "prop"]
    assert {'["swatch.prompt"]', '["swatch.hue"]', '["swatch.blob_count"]'} <= set(drawn)
    assert '["swatch.steps"]' not in drawn and ("operator", "splatsmith.generate", None) in log
    log.clear()
    settings.show_advanced = True
    panels.draw_method(_Layout(log), settings, None)
    drawn = [entry[1] for entry in log if entry[0] == "prop"]
    assert {'["swatch.steps"]', '["swatch.blob_radius"]', '["swatch.texture_size"]'} <= set(drawn)
    assert ("label", "Gaussians") in log and ("label", "Mesh") in log
    # A preset sets the method's values; editing one is what gets sent.
    settings.preset = "small"
    assert settings["swatch.blob_count"] == 600 and settings["swatch.steps"] == 10
    settings["swatch.hue"] = 2  # blue
    settings["swatch.prompt"] = "a blue ball"
    assert params.collect(settings, "swatch", client_glue.session.welcome["pipelines"]["swatch"], "small") == {
        "hue": "blue", "prompt": "a blue ball"}

    assert bpy.ops.splatsmith.generate(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    obj = bpy.data.objects[state.result_object]
    assert obj.name == "a blue ball" and obj["splatsmith_pipeline"] == "swatch" and obj["splatsmith_hue"] == "blue"
    assert json.loads(obj["splatsmith_request"])["params"] == {"hue": "blue", "prompt": "a blue ball"}
    image = next(n.image for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    pixels = np.asarray(image.pixels[:], np.float32).reshape(-1, 4)[:, :3]
    r, g, b = pixels[pixels.max(-1) > 0.02].mean(0)
    assert b > r + 0.2 and b > g + 0.2, (r, g, b)


def test_the_panel_follows_each_methods_description(blender_addon_connected, tmp_path):
    """What a method works on and its ``when``/``default_by`` data decide what the panel shows."""
    bpy, client_glue = blender_addon_connected
    from blender_addon import panels

    settings = bpy.context.scene.splatsmith
    settings.pipeline, settings.show_advanced = "dreamgaussian", True

    def drawn(obj=None) -> list:
        log: list = []
        panels.draw_method(_Layout(log), settings, obj)
        return log

    image_mode = drawn()
    assert ("template_ID",) in image_mode or ("prop", "image_path", None) in image_mode  # the image picker
    assert ("prop", '["dreamgaussian.elevation"]', "Elevation") in image_mode
    assert ("label", "Guidance scale: 5 (for mode)") in image_mode  # a default by mode, shown as data
    settings["dreamgaussian.mode"] = 1  # text
    text_mode = drawn()
    assert ("prop", "image_path", None) not in text_mode and ("template_ID",) not in text_mode
    assert ("prop", '["dreamgaussian.negative_prompt"]', "Negative prompt") in text_mode
    assert not any(e[1] == '["dreamgaussian.elevation"]' for e in text_mode if e[0] == "prop")
    assert ("label", "Guidance scale: 100 (for mode)") in text_mode
    settings["dreamgaussian.guidance_scale:set"] = True
    assert ("prop", '["dreamgaussian.guidance_scale"]', "Guidance scale") in drawn()
    # the output options, under their own heading, from the server's schema like every parameter
    log = drawn()
    at = log.index(("label", "Output"))
    assert ("prop", '["dreamgaussian.height"]', "Height") in log[at:] and \
        ("prop", '["dreamgaussian.normal_map"]', "Normal map") in log[at:]

    settings.pipeline = "texture_refine"
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    assert ("operator", "splatsmith.refine_texture", f"Run on {cube.name}") in drawn(cube)
    assert ("prop", "reference_view", None) in drawn(cube)
    settings.pipeline = "reconstruct"
    assert any(e[0] == "label" and "posed images" in e[1] for e in drawn())
    assert not any(e[0] == "operator" for e in drawn())

    # Values and marks are saved with the .blend and come back on load.
    path = str(tmp_path / "params.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    settings = bpy.context.scene.splatsmith
    assert settings["dreamgaussian.mode"] == 1 and settings["dreamgaussian.guidance_scale:set"]


@pytest.mark.slow
def test_dreamtime_is_in_the_panel_with_its_schedule_described_and_runs(blender_addon_connected):
    """DreamTime's method: listed, its schedule choice drawn with the chosen schedule's one-line
    description (and each choice's description in the menu), run from the panel to an object."""
    bpy, client_glue = blender_addon_connected
    from blender_addon import panels, properties

    settings = bpy.context.scene.splatsmith
    assert "dreamtime" in {item[0] for item in properties._pipeline_items(settings, bpy.context)}
    settings.pipeline = "dreamtime"
    settings.preset = "tiny"
    items = settings.id_properties_ui("dreamtime.timestep_schedule").as_dict()["items"]
    assert [i[0] for i in items] == ["dreamgaussian", "uniform", "dreamtime", "dtc"]
    assert items[2][2].startswith("DreamTime TP-SDS") and items[1][2].startswith("DreamFusion")
    assert items[settings["dreamtime.timestep_schedule"]][0] == "dreamtime"  # the method's default
    log: list = []
    settings.show_advanced = True
    panels.draw_method(_Layout(log), settings, None)
    assert ("prop", '["dreamtime.timestep_schedule"]', "Timestep schedule") in log
    assert any(e[0] == "label" and e[1].startswith("DreamTime TP-SDS") for e in log)
    assert ("prop", '["dreamtime.m1"]', "M1") in log  # the prior applies while the schedule is dreamtime
    settings["dreamtime.timestep_schedule"] = 1  # uniform: the prior's parameters are not drawn
    log.clear()
    panels.draw_method(_Layout(log), settings, None)
    assert not any(e[0] == "prop" and e[1] == '["dreamtime.m1"]' for e in log)
    assert any(e[0] == "label" and e[1].startswith("DreamFusion") for e in log)
    settings["dreamtime.timestep_schedule"] = 2
    settings["dreamtime.prompt"] = "a blue teapot"
    assert bpy.ops.splatsmith.generate(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    obj = bpy.data.objects[state.result_object]
    assert obj.name == "a blue teapot" and obj["splatsmith_pipeline"] == "dreamtime"
    assert len(obj.data.polygons) > 100 and "UVMap" in obj.data.uv_layers
    assert state.handle.result["meta"]["timestep_schedule"] == "dreamtime"


@pytest.mark.slow
def test_im3d_from_the_panel_shows_its_generated_views_as_an_image(blender_addon_connected):
    """IM-3D in the panel (text mode, tiny): the run lands as an object and the generated views
    arrive as the image '<preview> views' (a contact sheet, 2 x 2 tiles of the tiny preset's 4
    views of 64 px), which the add-on shows in any open Image Editor."""
    bpy, client_glue = blender_addon_connected
    from blender_addon import properties, scene_io

    settings = bpy.context.scene.splatsmith
    assert "im3d" in {item[0] for item in properties._pipeline_items(settings, bpy.context)}
    settings.pipeline = "im3d"
    settings.preset = "tiny"
    settings["im3d.mode"] = 1  # text
    settings["im3d.prompt"] = "a red chair"
    assert bpy.ops.splatsmith.generate(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    obj = bpy.data.objects[state.result_object]
    assert obj["splatsmith_pipeline"] == "im3d" and len(obj.data.polygons) > 50
    meta = state.handle.result["meta"]
    assert meta["mode"] == "text" and meta["loops"] == 2 and meta["denoiser_evaluations"] > 0
    views = bpy.data.images[f"{state.preview_name} views"]
    assert tuple(views.size) == (128, 128)
    pixels = np.asarray(views.pixels[:]).reshape(128, 128, 4)
    assert pixels[..., :3].std() > 0.01  # drawn, not blank
    assert scene_io.show_in_image_editors(views) == 0  # headless: no editor open, and no error


@pytest.mark.slow
def test_dtc123_from_the_panel_with_an_image_and_a_prompt(blender_addon_connected, tmp_path):
    """DTC123 in the panel (image plus an optional prompt, tiny): listed, its prompt drawn without a
    mode switch, run to an object whose meta carries the curriculum's stages and Stable
    Diffusion's prompt."""
    bpy, client_glue = blender_addon_connected
    from PIL import Image

    from blender_addon import properties
    from scenes import make_test_object, render_rgba, spiral_views

    settings = bpy.context.scene.splatsmith
    assert "dtc123" in {item[0] for item in properties._pipeline_items(settings, bpy.context)}
    mesh, _ = make_test_object(texture_size=64)
    Image.fromarray(render_rgba(mesh, spiral_views(1, size=64))[0]).save(tmp_path / "ref.png")
    image = bpy.data.images.load(str(tmp_path / "ref.png"))
    settings.image_source, settings.image = "BLEND", image
    settings.pipeline = "dtc123"
    settings.preset = "tiny"
    settings["dtc123.prompt"] = "a torus on a slab"
    assert bpy.ops.splatsmith.generate(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    obj = bpy.data.objects[state.result_object]
    assert obj["splatsmith_pipeline"] == "dtc123" and len(obj.data.polygons) > 50 and "UVMap" in obj.data.uv_layers
    meta = state.handle.result["meta"]
    assert set(meta["curriculum"]) == {"coarse", "middle", "fine"} and meta["curriculum"]["fine"]["steps"] == 6
    assert meta["stable_diffusion_prompt"] == "a torus on a slab"


@pytest.mark.slow
def test_dreamcraft3d_from_the_panel_draws_a_reference_then_uses_it(blender_addon_connected):
    """DreamCraft3D in the panel (tiny): a reference-only run ends with the reference image in
    the .blend (not an object), cut out of its white background by the backend, and "Use This
    Image" runs the rest in image mode to an object."""
    bpy, client_glue = blender_addon_connected
    from blender_addon import properties

    settings = bpy.context.scene.splatsmith
    assert "dreamcraft3d" in {item[0] for item in properties._pipeline_items(settings, bpy.context)}
    settings.pipeline = "dreamcraft3d"
    settings.preset = "tiny"
    settings["dreamcraft3d.prompt"] = "a red chair"
    settings["dreamcraft3d.reference_only"] = True
    assert bpy.ops.splatsmith.generate(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    masked = bpy.data.images[state.result_object]
    assert tuple(masked.size) == (64, 64) and client_glue.session.reference_image == masked.name
    assert masked["splatsmith_masked"]
    assert bpy.ops.splatsmith.use_reference(wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    final = client_glue.session.jobs[-1]
    obj = bpy.data.objects[final.result_object]
    assert obj["splatsmith_pipeline"] == "dreamcraft3d" and obj["splatsmith_mode"] == "image"
    assert len(obj.data.polygons) > 50 and final.handle.result["meta"]["boost"]["rounds"] == 2


@pytest.mark.slow
def test_dreamcraft3d_regenerate_reuses_the_objects_dreambooth_lora(blender_addon_connected, tmp_path):
    """A DreamCraft3D result (image mode, tiny Stable Diffusion) remembers that the backend kept
    its DreamBooth LoRA; Regenerate sends that job's id as ``reuse_lora``, so the new version
    skips the first round's fine-tuning."""
    import json

    bpy, client_glue = blender_addon_connected
    from PIL import Image

    from scenes import make_test_object, render_rgba, spiral_views

    mesh, _ = make_test_object(texture_size=64)
    Image.fromarray(render_rgba(mesh, spiral_views(1, size=64))[0]).save(tmp_path / "ref.png")
    image = bpy.data.images.load(str(tmp_path / "ref.png"))
    params = json.dumps({"mode": "image", "prompt": "a torus on a slab"})
    assert bpy.ops.splatsmith.generate(pipeline="dreamcraft3d", preset="tiny", params=params, image_name=image.name,
                                       wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    first = bpy.data.objects[client_glue.session.jobs[-1].result_object]
    assert first["splatsmith_dreambooth_lora"] and len(first.data.polygons) > 50
    bpy.context.view_layer.objects.active = first
    assert bpy.ops.splatsmith.regenerate(wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    again = client_glue.session.jobs[-1]
    assert again.request["params"]["reuse_lora"] == first["splatsmith_job_id"]
    assert len(again.handle.result["meta"]["boost"]["dreambooth_loss"]) == 1  # round 1 loaded, round 2 trained
