"""Stages: the reusable parts that methods compose (threestudio's and gsplat's style: each
stage is a module with explicit inputs and outputs, the optimisation loop stays with the
method, policies such as densification are objects with hooks).

- :mod:`.progress`: the one preview throttle.
- :mod:`.gaussians`: Gaussian optimisation parts: position learning-rate decay, densification
  policy, optimiser step, losses (multi-view image loss, reference-view loss, weighted SDS
  terms), previews.
- :mod:`.mesh_export`: Gaussians -> extracted mesh -> UV atlas -> baked texture, and the
  textured asset's files and arrays.
- :mod:`.texture`: texture optimisation against a teacher (SDEdit targets and/or SDS) with a
  reference-view loss.

Methods (``backend.pipelines``) import stages, never each other.
"""
