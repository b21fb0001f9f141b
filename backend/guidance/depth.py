"""Monocular depth of a reference image, and the depth correlation loss that uses it.

DTC123 (Yi et al. 2024, section 3.3) restores the reference view with RGB, mask and depth
losses; its depth comes from a monocular estimator and is compared up to scale and shift, as in
Magic123 and threestudio's ``zero123`` system (``systems/zero123.py``, ``lambda_depth_rel``:
``1 - pearson(pred_depth[mask], ref_depth[mask])``). The estimator here is DPT-Hybrid (MiDaS
3.0, Ranftl et al. 2021) through transformers' ``DPTForDepthEstimation``; it predicts relative
inverse depth (disparity, affine-invariant), so the loss correlates it with the render's inverse
depth.

The estimator is declared in the teacher registry (``guidance.registry.DEPTH``) so that ``splatsmith
models list/download`` know its weights, but it is not a teacher: :func:`load_depth_estimator`
loads it, and returns None when its weights are not present locally (the pipeline then skips the
loss and says so). The ``tiny`` variant is a randomly initialised DPT written locally
(:func:`write_tiny_dpt`) that proves the plumbing, never the quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


class MonocularDepth:
    """A loaded DPT depth estimator.

    Args:
        model: ``transformers.DPTForDepthEstimation`` in eval mode on its device.
        size: (height, width) the network runs at (the preprocessor's ``size``).
        mean, std: per-channel normalisation of [0, 1] images (the preprocessor's).
    """

    def __init__(self, model, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]):
        self.model, self.size = model, size
        device = next(model.parameters()).device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def disparity(self, rgb: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth of images ``rgb`` float [B, 3, H, W] in [0, 1], as float
        [B, 1, H, W] (larger is nearer; affine-invariant: only its correlation is meaningful)."""
        device = self.mean.device
        x = F.interpolate(rgb.to(device, torch.float32), self.size, mode="bicubic", align_corners=False).clamp(0, 1)
        out = self.model(pixel_values=(x - self.mean) / self.std).predicted_depth[:, None]
        return F.interpolate(out, rgb.shape[-2:], mode="bicubic", align_corners=False).to(rgb.device)


def load_dpt(folder: Path, model_id: str, device: str, fp16=None, attention_slicing=False, cpu_offload=False):
    """The registry loader: a :class:`MonocularDepth` from a ``DPTForDepthEstimation`` folder
    (``config.json``, weights, ``preprocessor_config.json``)."""
    from transformers import DPTForDepthEstimation

    from .quiet import quiet_libraries

    quiet_libraries()
    model = DPTForDepthEstimation.from_pretrained(str(folder)).eval().to(device)
    pre = json.loads((Path(folder) / "preprocessor_config.json").read_text())
    size = pre.get("size", {"height": 384, "width": 384})
    return MonocularDepth(model, (int(size["height"]), int(size["width"])), tuple(pre.get("image_mean", (0.5,) * 3)),
                          tuple(pre.get("image_std", (0.5,) * 3)))


def load_depth_estimator(weights: str, device: str, *, models_dir=None, cache=None) -> MonocularDepth | None:
    """The depth estimator of a weights variant (``tiny``: the random tiny DPT; anything else:
    DPT-Hybrid), or None when its weights are not present locally."""
    from . import load_estimator

    return load_estimator("depth", "tiny" if weights == "tiny" else "default", device, models_dir=models_dir, cache=cache)


def depth_correlation_loss(depth: torch.Tensor, disparity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation between the render's inverse depth and the estimated disparity
    over the pixels of ``mask`` (threestudio ``systems/zero123.py``'s ``depth_rel``; scale- and
    shift-invariant, as monocular estimates are).

    Args:
        depth: rendered depth float [B, 1, H, W], metres (0 where empty).
        disparity: :meth:`MonocularDepth.disparity` of the reference, float [B, 1, H, W].
        mask: bool [B, 1, H, W], the pixels compared (the object, where the render has depth).
    Returns:
        A scalar in [0, 2]; 0 with fewer than 2 pixels in ``mask``.
    """
    keep = mask & (depth > 1e-6)
    if int(keep.sum()) < 2:
        return torch.zeros((), device=depth.device)
    pred = 1.0 / depth[keep]
    ref = disparity[keep].to(pred.dtype)
    pred, ref = pred - pred.mean(), ref - ref.mean()
    corr = (pred * ref).sum() / (pred.norm() * ref.norm()).clamp_min(1e-12)
    return 1.0 - corr


def write_tiny_dpt(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``DPTForDepthEstimation`` (32 px, 4 layers) in the layout of
    ``Intel/dpt-hybrid-midas`` (``config.json``, safetensors weights,
    ``preprocessor_config.json``; ``model_index.json`` marks the folder complete)."""
    from transformers import DPTConfig, DPTForDepthEstimation

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        DPTForDepthEstimation(DPTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=8, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
            head_in_index=-1)).save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "keep_aspect_ratio": False, "ensure_multiple_of": 8}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DPTForDepthEstimation"}))
    return folder
