"""LPIPS (issue 27, item 2): the lpips package's network and learned linear layers over a VGG16 /
AlexNet backbone in torchvision's layout, its checkpoint found in torch's hub cache or under
--models-dir, and IM-3D's loss taking the LPIPS branch when it is there (L1 and a log line when
it is not)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from backend.perceptual import BACKBONES, find_backbone, load_lpips, torchvision_layout_models
from backend.pipelines.base import Emitter
from backend.stages.reconstruction import GaussianFit, Views, robust_image_loss


def _write_random_checkpoint(path: Path, backbone: str, seed: int = 0) -> Path:
    """A checkpoint in torchvision's layout (``features.<i>.weight``/``bias``) with random
    weights: what torchvision's ImageNet file holds for the feature stack, without the download."""
    torch.manual_seed(seed)
    builder = {"vgg": torchvision_layout_models().vgg16, "alex": torchvision_layout_models().alexnet}[backbone]
    features = builder().features
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def vgg_home(tmp_path_factory):
    """A torch hub folder holding a random VGG16 checkpoint under torchvision's file name."""
    home = tmp_path_factory.mktemp("torch-home")
    _write_random_checkpoint(home / "hub" / "checkpoints" / BACKBONES["vgg"].file, "vgg")
    return home


def test_the_torchvision_layout_matches_torchvisions_checkpoint_keys():
    """The feature stacks have torchvision's module indices and shapes (AlexNet: 5 convolutions at
    0, 3, 6, 8, 10; VGG16 configuration D: 13 convolutions, the last at 28), so its files load."""
    models = torchvision_layout_models()
    alex = {k: tuple(v.shape) for k, v in models.alexnet().features.state_dict().items()}
    assert alex["0.weight"] == (64, 3, 11, 11) and alex["10.weight"] == (256, 256, 3, 3) and len(alex) == 10
    vgg = {k: tuple(v.shape) for k, v in models.vgg16().features.state_dict().items()}
    convs = sorted(int(k.split(".")[0]) for k in vgg if k.endswith("weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert vgg["28.weight"] == (512, 512, 3, 3) and len(models.vgg16().features) == 31
    with pytest.raises(ValueError, match="carry no weights"):
        models.vgg16(pretrained=True)


def test_lpips_uses_the_packages_linear_layers_and_the_local_backbone(vgg_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(vgg_home))
    net = load_lpips("cpu", "vgg")
    assert net is not None
    # The package's learned linear layers (lpips/weights/v0.1/vgg.pth), not random ones.
    shipped = Path(importlib.util.find_spec("lpips").submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth"
    lin = torch.load(shipped, map_location="cpu", weights_only=True)
    assert torch.equal(net.lin0.model[1].weight, lin["lin0.model.1.weight"])
    # The backbone is the checkpoint's: slice1's first convolution is features.0.
    checkpoint = torch.load(find_backbone("vgg"), map_location="cpu", weights_only=True)
    assert torch.equal(getattr(net.net.slice1, "0").weight, checkpoint["features.0.weight"])
    assert torch.equal(getattr(net.net.slice5, "28").weight, checkpoint["features.28.weight"])
    assert not any(p.requires_grad for p in net.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    same, other = net(x, x), net(x, y)
    assert same.shape == (2, 1, 1, 1) and float(same.abs().max()) < 1e-6 and float(other.min()) > 0
    # Under --models-dir/torchvision the file is found without the hub cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert load_lpips("cpu", "vgg") is None
    models = tmp_path / "models"
    _write_random_checkpoint(models / "torchvision" / BACKBONES["vgg"].file, "vgg", seed=1)
    assert find_backbone("vgg", models) == models / "torchvision" / BACKBONES["vgg"].file
    assert load_lpips("cpu", "vgg", models) is not None


class Lines(Emitter):
    def __init__(self):
        super().__init__()
        self.log_lines: list[str] = []

    def _on_log(self, line):
        self.log_lines.append(line)


def _views(n: int = 2, size: int = 32) -> Views:
    from backend.cameras import orbit_cameras

    cams = orbit_cameras(torch.zeros(n), torch.arange(n) * 180.0, 2.0, 49.1, size, size)
    images = torch.ones(n, size, size, 4)
    images[:, 8:24, 8:24, :3] = torch.tensor([0.8, 0.3, 0.2])
    images[..., 3] = 0.0
    images[:, 8:24, 8:24, 3] = 1.0
    return Views(cams, images)


FIT = {"init_points": 200, "init_radius": 0.3, "sh_degree": 0, "lr_means": 1.6e-3, "lr_scales": 5e-3, "lr_quats": 1e-3,
       "lr_opacities": 0.05, "lr_colors": 0.01, "loss": "im3d", "w_lpips": 10.0, "w_ssim": 0.2, "w_mask": 1.0,
       "densify_from": 100, "densify_every": 100, "densify_until": 0, "densify_grad": 2e-4, "prune_opacity": 0.005,
       "opacity_reset_every": 0, "views_per_step": 2}


def test_im3d_loss_takes_the_lpips_branch_when_the_backbone_is_local(vgg_home, monkeypatch):
    """IM-3D's 10 LPIPS-VGG + 0.2 (1 - MS-SSIM) + mask: with the backbone local the fit uses LPIPS
    (no log line) and its loss is 10 x LPIPS + the rest; without it, L1 stands in and the log says
    so."""
    monkeypatch.setenv("TORCH_HOME", str(vgg_home))
    emit = Lines()
    fit = GaussianFit(_views(), FIT, torch.Generator().manual_seed(0), emit, init="centre")
    assert fit.lpips_net is not None and not emit.log_lines
    pred = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    alpha = torch.ones(2, 32, 32)
    kwargs = dict(w_ssim=0.2, w_mask=1.0, w_lpips=10.0)
    with_lpips = robust_image_loss(pred, target, alpha, alpha, "im3d", lpips_net=fit.lpips_net, **kwargs)
    rest = robust_image_loss(pred, target, alpha, alpha, "im3d", lpips_net=fit.lpips_net, w_ssim=0.2, w_mask=1.0,
                             w_lpips=0.0)
    lpips_value = fit.lpips_net(pred.permute(0, 3, 1, 2) * 2 - 1, target.permute(0, 3, 1, 2) * 2 - 1).mean()
    assert torch.allclose(with_lpips, rest + 10.0 * lpips_value, rtol=1e-5)
    with_l1 = robust_image_loss(pred, target, alpha, alpha, "im3d", lpips_net=None, **kwargs)
    assert not torch.allclose(with_lpips, with_l1)
    with_lpips.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert fit.step(1, 10) > 0  # a fitting step through LPIPS
    monkeypatch.setenv("TORCH_HOME", str(vgg_home / "nothing"))
    emit = Lines()
    fit = GaussianFit(_views(), FIT, torch.Generator().manual_seed(0), emit, init="centre")
    assert fit.lpips_net is None
    assert any("LPIPS off" in line and "vgg16-397923af.pth" in line and "L1 takes its place" in line
               for line in emit.log_lines), emit.log_lines


def test_models_list_and_download_know_the_backbones(vgg_home, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from backend.cli import app

    monkeypatch.setenv("TORCH_HOME", str(vgg_home))
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    rows = {line.split("│")[3].strip(): line for line in listed.output.splitlines() if "torchvision/" in line}
    assert "yes" in rows["torchvision/vgg16"] and "no" in rows["torchvision/alexnet"]
    assert "splatsmith models download torchvision/alexnet" in rows["torchvision/alexnet"]
    present = runner.invoke(app, ["models", "download", "torchvision/vgg16"])
    assert present.exit_code == 0 and "vgg16-397923af.pth" in present.output  # already there: nothing fetched
