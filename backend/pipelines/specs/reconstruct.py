"""What the server knows of multi-view reconstruction without importing torch: parameters,
presets, inputs and checks (the method is ``backend.pipelines.reconstruct``)."""
from __future__ import annotations

import dataclasses

from .fitting import fit_params
from ..base import (OUTPUT_PARAMS, BYTES_PER_GAUSSIAN, BYTES_PER_TEXEL, BYTES_PER_VOXEL, InputSpec, Param, ParamError, Pipeline,
                    grouped, register)


@register
class ReconstructSpec(Pipeline):
    """Posed RGBA images -> Gaussians -> textured mesh (IM-3D's reconstruction stage)."""

    implementation = "backend.pipelines.reconstruct:ReconstructPipeline"

    name = "reconstruct"
    title = "Multi-view reconstruction"
    params = {
        "camera_angle_x": Param("float", 0.8575560450553894, "horizontal field of view of the images, radians", min=0.01, max=3.1),
        "resolution": Param("int", 256, "training resolution (longer image side), pixels", min=32, max=1024),
        "iters": Param("int", 3000, "optimisation steps", min=1, max=100_000),
        "init_points": Param("int", 10_000, "initial Gaussians (from the visual hull)", min=100, max=500_000),
        "lr_means": Param("float", 1.6e-3, "position learning rate at the start, in object sizes (the fitted object's extent; decays to 1%)", min=0, max=1),
        "loss": Param("choice", "l1_ssim", "image loss: l1_ssim ((1 - w_ssim) L1 + w_ssim (1 - MS-SSIM) + w_lpips "
                      "LPIPS-AlexNet) or im3d (w_lpips LPIPS-VGG + w_ssim (1 - MS-SSIM), IM-3D's robust loss; L1 in "
                      "LPIPS's place without its weights); both add the mask loss", choices=("l1_ssim", "im3d")),
        "w_ssim": Param("float", 0.2, "weight of (1 - MS-SSIM) (against L1 for l1_ssim)", min=0, max=1),
        "w_mask": Param("float", 0.5, "weight of the mask loss", min=0, max=100),
        "w_lpips": Param("float", 0.1, "weight of LPIPS (im3d: 10 in the paper), used when the lpips package and its "
                         "weights are present locally", min=0, max=100),
        "densify_from": Param("int", 100, "first densification step", min=0, max=100_000),
        "densify_every": Param("int", 100, "steps between densifications", min=1, max=100_000),
        "densify_until": Param("int", 1800, "last densification step (60% of the default iters, as 3DGS's 15k of 30k)",
                               min=0, max=100_000),
        **fit_params(),
        **OUTPUT_PARAMS,
        # the poses give the object's real size and place: kept unless a height is asked for
        "height": dataclasses.replace(OUTPUT_PARAMS["height"], default=0.0),
    }
    params = grouped(params, groups={
        "input": ("camera_angle_x", "resolution"),
        "gaussians": ("iters", "init_points", "sh_degree", "lr_means", "lr_scales", "lr_quats", "lr_opacities", "lr_colors",
                      "loss", "w_ssim", "w_mask", "w_lpips"),
        "densification": ("densify_from", "densify_every", "densify_until", "densify_grad", "prune_opacity", "opacity_reset_every"),
        "mesh": ("mesh_resolution", "density_threshold", "max_faces", "unwrap_time_limit"),
        "texture": ("texture_size",),
    }, basic=("iters", "resolution", "texture_size"))
    works_on = ("posed_images",)
    presets = {
        "default": {},
        "fast": {"resolution": 128, "iters": 700, "init_points": 6000, "densify_from": 100, "densify_every": 100,
                 "densify_until": 420, "max_faces": 20_000, "texture_size": 512, "mesh_resolution": 128},
    }
    inputs = {
        "images": InputSpec(("uint8",), (None, None, None, (4,)), required=True, help="RGBA views uint8 [N, H, W, 4]"),
        "transforms": InputSpec(("float32",), (None, 4, 4), required=True,
                                help="camera-to-world per view (NeRF transform_matrix, Blender world) float32 [N, 4, 4]"),
    }

    @classmethod
    def check_request(cls, params, inputs):
        images, transforms = inputs.get("images"), inputs.get("transforms")
        if images is not None and transforms is not None and images.shape[0] != transforms.shape[0]:
            raise ParamError(f"{images.shape[0]} images but {transforms.shape[0]} transforms: give one per image")
        if images is not None and images.shape[0] < 2:
            raise ParamError("reconstruction needs at least 2 views")

    @classmethod
    def estimate_memory(cls, params, inputs):
        views = inputs["images"].shape[0] if "images" in inputs else 1
        return {
            "resolution": views * params["resolution"] ** 2 * 4 * 4 * 4,  # images as float, targets, renders, grads
            "images": int(inputs["images"].nbytes) if "images" in inputs else 0,
            "init_points": params["init_points"] * 4 * BYTES_PER_GAUSSIAN,
            "mesh_resolution": params["mesh_resolution"] ** 3 * BYTES_PER_VOXEL,
            "texture_size": params["texture_size"] ** 2 * BYTES_PER_TEXEL,
        }
