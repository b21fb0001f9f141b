"""LPIPS, the learned perceptual image patch similarity (Zhang et al. 2018, "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric"), as the ``lpips`` package computes it:
its network, its normalisation and its learned linear layers (the ``v0.1`` weights the package
ships), over an ImageNet backbone (AlexNet or VGG16) whose weights are torchvision's own
checkpoint files.

Where a backbone's checkpoint is looked for (nothing is downloaded during a job):

1. ``MODELS_DIR/torchvision/<file>`` (``--models-dir``);
2. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (default
   ``~/.cache/torch/hub/checkpoints``), where torchvision itself keeps them.

``splatsmith models download torchvision/vgg16`` (or ``torchvision/alexnet``) fetches one from
the address torchvision uses (:data:`BACKBONES`).

The backbone's architecture comes from ``torchvision.models`` when torchvision can be imported.
PyPI's Linux torchvision is a CUDA build: beside a CPU-only torch its extension cannot load and
``import torchvision`` fails (``guidance.quiet.hide_broken_torchvision`` then marks it absent so
that transformers keeps working). In that case :func:`torchvision_layout_models` builds the same
two feature stacks here, module for module in torchvision's layout (``features.<i>``), so the
same checkpoint loads into them and lpips runs unchanged. That is the only part written here, for
want of a torchvision that runs beside a CPU torch.
"""
from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Backbone:
    """A torchvision ImageNet checkpoint LPIPS builds on.

    Attributes:
        model_id: the id ``splatsmith models list/download`` shows (``torchvision/vgg16``).
        file: the checkpoint's file name (torchvision's, with its hash prefix).
        url: where torchvision downloads it from (``torchvision.models.*_Weights.IMAGENET1K_V1``).
    """

    model_id: str
    file: str
    url: str

    @property
    def hash_prefix(self) -> str:
        """The SHA-256 prefix in the file name (``vgg16-397923af.pth`` -> ``397923af``)."""
        return self.file.rsplit("-", 1)[-1].split(".")[0]


#: The LPIPS backbones by lpips' ``net`` name: ``alex`` (3DGS-style L1/SSIM + LPIPS of the
#: ``reconstruct`` method) and ``vgg`` (IM-3D's LPIPS-VGG, appendix A.1).
BACKBONES = {
    "alex": Backbone("torchvision/alexnet", "alexnet-owt-7be5be79.pth",
                     "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": Backbone("torchvision/vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def backbone_by_id(model_id: str) -> Backbone | None:
    """The backbone whose ``model_id`` is given, or None."""
    return next((b for b in BACKBONES.values() if b.model_id == model_id), None)


def torch_hub_checkpoints() -> Path:
    """torch's checkpoint folder (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_backbone(backbone: str, models_dir: str | os.PathLike | None = None) -> Path | None:
    """The local checkpoint file of ``backbone`` (``"alex"`` or ``"vgg"``): under
    ``models_dir/torchvision/`` first, then in the torch hub cache; None when absent.

    Raises:
        KeyError: an unknown backbone.
    """
    spec = BACKBONES[backbone]
    candidates = ([Path(models_dir) / "torchvision" / spec.file] if models_dir else []) + [
        torch_hub_checkpoints() / spec.file]
    return next((path for path in candidates if path.is_file()), None)


def download_backbone(backbone: str, models_dir: str | os.PathLike | None = None) -> Path:
    """Download ``backbone``'s checkpoint from torchvision's address into ``models_dir/torchvision``
    (or the torch hub cache), checking its hash prefix (``torch.hub.download_url_to_file``).
    Returns the file; an existing one is kept.

    Raises:
        RuntimeError: the download failed or the hash does not match (the message says which).
    """
    spec = BACKBONES[backbone]
    folder = Path(models_dir) / "torchvision" if models_dir else torch_hub_checkpoints()
    target = folder / spec.file
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=spec.hash_prefix, progress=False)
    return target


def torchvision_layout_models() -> types.SimpleNamespace:
    """``alexnet`` and ``vgg16`` builders in torchvision's module layout: each returns a module
    whose ``features`` is the ``torch.nn.Sequential`` of ``torchvision.models.alexnet`` /
    ``vgg16`` (configuration "D": 13 3x3 convolutions with ReLUs and 5 max-pools), with the same
    indices, so ``features.<i>.weight`` of torchvision's checkpoints load into it. Random
    initial weights; the ``pretrained``/``weights`` arguments must ask for none (lpips'
    ``pnet_rand=True``), the checkpoint is loaded by :func:`load_lpips`.

    Raises (from the builders):
        ValueError: pretrained weights asked for.
    """
    nn = torch.nn

    def _no_weights(pretrained: bool = False, weights=None, **_: object) -> None:
        if pretrained or weights is not None:
            raise ValueError("the torchvision-layout backbones carry no weights; load a checkpoint into them")

    def alexnet(pretrained: bool = False, weights=None, **kwargs: object) -> nn.Module:
        _no_weights(pretrained, weights)
        net = nn.Module()
        net.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        return net

    def vgg16(pretrained: bool = False, weights=None, **kwargs: object) -> nn.Module:
        _no_weights(pretrained, weights)
        layers: list[nn.Module] = []
        channels = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        net = nn.Module()
        net.features = nn.Sequential(*layers)
        return net

    return types.SimpleNamespace(alexnet=alexnet, vgg16=vgg16)


def import_lpips() -> types.ModuleType | None:
    """The ``lpips`` package, or None when it is not installed. Where torchvision cannot be
    imported, lpips is imported over :func:`torchvision_layout_models` (module doc)."""
    from .guidance.quiet import hide_broken_torchvision

    hide_broken_torchvision()
    if "lpips" in sys.modules:
        return sys.modules["lpips"]
    try:
        import lpips
        return lpips
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            return None
    hidden = sys.modules.get("torchvision", "absent")
    stand_in = types.ModuleType("torchvision")
    stand_in.models = torchvision_layout_models()
    sys.modules["torchvision"] = stand_in
    try:
        import lpips
    except ModuleNotFoundError:
        return None
    finally:
        if hidden == "absent":
            sys.modules.pop("torchvision", None)
        else:
            sys.modules["torchvision"] = hidden
    return lpips


def load_backbone_checkpoint(net: torch.nn.Module, checkpoint: Path) -> None:
    """Load a torchvision checkpoint's ``features.<i>.*`` tensors into the backbone of an lpips
    network (lpips' ``alexnet``/``vgg16`` modules, whose ``slice<k>`` children keep the feature
    indices as their names).

    Raises:
        ValueError: the checkpoint lacks a tensor the backbone has, or a shape differs (the
            message names the first one).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for slice_name, block in net.named_children():
        for index, module in block.named_children():
            for name, param in module.named_parameters(recurse=False):
                key = f"features.{index}.{name}"
                if key not in state:
                    raise ValueError(f"{checkpoint} has no {key!r}: not a torchvision checkpoint of this backbone")
                if tuple(state[key].shape) != tuple(param.shape):
                    raise ValueError(f"{checkpoint}: {key} is {tuple(state[key].shape)}, the backbone needs "
                                     f"{tuple(param.shape)}")
                with torch.no_grad():
                    param.copy_(state[key])


def load_lpips(device: str, backbone: str = "alex", models_dir: str | os.PathLike | None = None):
    """The LPIPS network with the ``"alex"`` or ``"vgg"`` backbone: lpips' ``LPIPS(net=...)``
    with its learned linear layers, the backbone's ImageNet weights from the local checkpoint
    (:func:`find_backbone`), frozen, in eval mode, on ``device``. None when the lpips package or
    the checkpoint is absent (nothing is downloaded).

    Called as ``net(x, y)`` on images float [B, 3, H, W] in [-1, 1]; returns float [B, 1, 1, 1].
    """
    lpips = import_lpips()
    checkpoint = find_backbone(backbone, models_dir)
    if lpips is None or checkpoint is None:
        return None
    net = lpips.LPIPS(net=backbone, pretrained=True, pnet_rand=True, verbose=False)
    load_backbone_checkpoint(net.net, checkpoint)
    net = net.to(device).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net
