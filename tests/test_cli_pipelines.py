"""`splatsmith pipelines` and `splatsmith generate --pipeline NAME --param KEY=VALUE`, checked
against the schema of this installation or of a running server."""
from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from backend.cli import app
from backend.pipelines.base import Param, ParamError

runner = CliRunner()


def test_pipelines_lists_the_methods_and_one_methods_parameters():
    listed = runner.invoke(app, ["pipelines"])
    assert listed.exit_code == 0, listed.output
    for name in ("dreamgaussian", "reconstruct", "texture_refine"):
        assert name in listed.output
    one = runner.invoke(app, ["pipelines", "dreamgaussian"], env={"COLUMNS": "250"})
    assert one.exit_code == 0 and "resolutions" in one.output and "preset fast" in one.output
    assert "64,96,128" in one.output  # the fast preset's value
    missing = runner.invoke(app, ["pipelines", "teleport"])
    assert missing.exit_code == 1 and "available: dreamcraft3d, dreamgaussian" in missing.output


def test_pipelines_of_a_running_server_and_generate_with_params(make_server, tmp_path):
    server = make_server()
    address = server.endpoint.replace("tcp://", "")
    listed = runner.invoke(app, ["pipelines", "--server", address])
    assert listed.exit_code == 0 and "fit" in listed.output and "crash" in listed.output
    made = runner.invoke(app, ["generate", "--pipeline", "fit", "--server", address, "--seed", "2", "--param", "steps=3",
                               "--param", "lr=0.1", "--param", "points=16", "--out", str(tmp_path / "out" / "x.glb")])
    assert made.exit_code == 0, made.output
    points = np.fromfile(tmp_path / "out" / "points.bin", np.float32).reshape(-1, 3)
    assert points.shape == (16, 3)
    job = server.store.all()[-1]
    assert (job.params["steps"], job.params["lr"], job.params["points"], job.seed) == (3, 0.1, 16, 2)


def test_generate_param_errors_are_one_sentence(make_server):
    address = make_server().endpoint.replace("tcp://", "")
    cases = [
        (["--param", "stpes=3"], "has no parameter 'stpes'; did you mean 'steps'?"),
        (["--param", "steps=-5"], "outside the allowed range"),
        (["--param", "steps=many"], "must be a whole number"),
        (["--param", "steps"], "--param takes KEY=VALUE"),
    ]
    for extra, words in cases:
        out = runner.invoke(app, ["generate", "--pipeline", "fit", "--server", address, *extra])
        assert out.exit_code == 1 and words in out.output and "Traceback" not in out.output, out.output
    unknown = runner.invoke(app, ["generate", "--pipeline", "teleport", "--prompt", "x"])
    assert unknown.exit_code == 1 and "unknown pipeline" in unknown.output


def test_param_parse_follows_the_kind():
    assert Param("bool", False).parse("x", "yes") is True and Param("bool", True).parse("x", "off") is False
    assert Param("float", 0.0, min=0, max=1).parse("x", "0.25") == 0.25
    assert Param("choice", "a", choices=("a", "b")).parse("x", "b") == "b"
    for param, text in ((Param("bool", False), "maybe"), (Param("choice", "a", choices=("a", "b")), "c"),
                        (Param("float", 0.0, min=0, max=1), "2")):
        try:
            param.parse("x", text)
        except ParamError:
            continue
        raise AssertionError(f"{text!r} was accepted")
    described = Param("int", 3, "help", min=1, max=9).describe()
    assert Param.from_description(described) == Param("int", 3, "help", min=1, max=9)


def test_mode_dependent_defaults_are_data_not_sentinels():
    from backend.pipelines.base import PARAM_GROUPS
    from backend.pipelines import load_builtin

    spec = load_builtin()["dreamgaussian"]
    _, text = spec.merge_params("default", {"mode": "text", "prompt": "x"})
    _, image = spec.merge_params("default", {"mode": "image"})
    assert (text["radius"], text["densify_from"], text["densify_every"], text["guidance_scale"]) == (2.5, 0, 50, 100.0)
    assert (image["radius"], image["densify_from"], image["densify_every"], image["guidance_scale"]) == (2.0, 100, 100, 5.0)
    assert spec.merge_params("default", {"mode": "text", "radius": 3.0})[1]["radius"] == 3.0
    for name, cls in load_builtin().items():
        described = cls.describe()
        assert described["works_on"], name
        assert not any(p["kind"] in ("int", "float") and p.get("min", 0) < 0 and p.get("default") == -1
                       for p in described["params"].values()), f"{name} keeps a -1 sentinel"
        assert all(p["group"] in PARAM_GROUPS for p in described["params"].values()), name
        assert any(not p["advanced"] for p in described["params"].values()), name
    radius = spec.describe()["params"]["radius"]
    assert radius["default"] is None and radius["default_by"] == {"param": "mode", "values": {"image": 2.0, "text": 2.5}}
    assert load_builtin()["texture_refine"].merge_params("default", {"prompt": "x"})[1]["guidance_scale"] is None
    shown = runner.invoke(app, ["pipelines", "dreamgaussian"], env={"COLUMNS": "250"})
    assert "by mode: image 2.0, text 2.5" in shown.output


def test_every_number_is_bounded_and_one_validator_checks_every_resolution_list():
    """Issue 27, item 4: no parameter of a built-in method takes an unbounded number, and the
    methods with a list of render sizes refuse one out of range with the same sentence."""
    import pytest

    from backend.pipelines import load_builtin
    from backend.contracts import MAX_RENDER_SIZE, ParamError

    registry = load_builtin()
    for name, cls in registry.items():
        for key, param in cls.params.items():
            if param.kind in ("int", "float"):
                assert param.min is not None and param.max is not None, (name, key)
    listed = [name for name, cls in registry.items() if "resolutions" in cls.params]
    assert {"dreamgaussian", "dreamtime", "dreamcraft3d"} <= set(listed)
    for name in listed:
        _, params = registry[name].merge_params("tiny", {"mode": "text", "prompt": "x", "resolutions": "64,96,99999"})
        with pytest.raises(ParamError, match=f"'resolutions' must be 3 sizes from 16 to {MAX_RENDER_SIZE} pixels"):
            registry[name].check_request(params, {})
