"""Files that are not what they are named (issue 28, item 3): a text file named ``.png`` for
``--image``, ``--mask`` or ``refine-texture --image``, a fake ``.glb`` for a mesh or an oracle
mesh. Each is one sentence naming the file and what it should be, exit 1, no traceback; the same
through a server, whose job fails with that sentence while it keeps serving."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.pipelines import load_builtin
from scenes import make_test_object, write_object_glb
from shared_protocol.client import JobError


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    from backend.images import demo_photo

    rgb, mask = demo_photo()
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    (tmp_path / "notes.png").write_text("shopping list: eggs, milk\n")
    (tmp_path / "fake.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\x07" * 37)
    write_object_glb(tmp_path / "mesh.glb", make_test_object(texture_size=32)[1])
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.mark.parametrize("case", ["image", "mask", "refine-image", "mesh", "oracle-mesh"])
def test_a_file_that_is_not_what_it_is_named_is_one_sentence(files, case):
    jobs = str(files / "jobs")
    common = ["--preset", "tiny", "--device", "cpu", "--output-dir", jobs, "--out", str(files / "out.glb")]
    argv, named, wanted = {
        "image": (["generate", "--image", str(files / "notes.png"), *common], "notes.png", "PNG or JPEG"),
        "mask": (["generate", "--image", str(files / "photo.png"), "--mask", str(files / "notes.png"), *common],
                 "notes.png", "white where the object is"),
        "refine-image": (["refine-texture", str(files / "mesh.glb"), "--image", str(files / "notes.png"), *common],
                         "notes.png", "PNG or JPEG"),
        "mesh": (["refine-texture", str(files / "fake.glb"), "--prompt", "bronze", *common], "fake.glb", "(.glb)"),
        "oracle-mesh": (["generate", "--prompt", "x", "--teacher", "oracle", "--oracle-mesh", str(files / "fake.glb"),
                         *common], "fake.glb", "(.glb)"),
    }[case]
    result = _run(*argv)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert named in text and wanted in text and "Traceback" not in result.output, result.output


def test_through_a_server_the_job_fails_with_the_sentence_and_the_server_goes_on(files, make_server, make_client):
    server = make_server(pipelines=load_builtin(), allow_oracle=str(files))
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as caught:
        client.wait(client.submit("dreamgaussian", preset="tiny", params={
            "mode": "text", "prompt": "x", "teacher": "oracle", "oracle_mesh": str(files / "fake.glb")}), timeout=600)
    assert caught.value.code == "bad_params" and "fake.glb" in caught.value.message and "(.glb)" in caught.value.message
    assert client.ping(timeout=30) >= 0
    # The CLI against the server reads the files itself: the same sentence, before anything is sent.
    result = _run("generate", "--image", str(files / "notes.png"), "--preset", "tiny", "--server",
                  server.endpoint.replace("tcp://", ""), "--out", str(files / "out.glb"))
    assert result.exit_code == 1 and "notes.png" in result.output and "Traceback" not in result.output
