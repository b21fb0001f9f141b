"""What a second reference image buys, on a teacher that does not hand back the truth: the prior
oracle (K=2, sigma=0.3), image mode, ``fast``, the references rendered from the truth (mode 0)
at the front and at the back (``bench/multi_reference.py`` prints the same runs for more seeds).

Asserted for DreamGaussian, seed 0 (DTC123's same runs, +2.48 dB at the back and its fits within
0.01 dB, are printed by ``python bench/multi_reference.py --methods dtc123``: the suite's time on
two cores keeps one method here):

- at the back, which only the second image shows, the asset is at least 1.5 dB closer to the
  truth than the single-image run's;
- at every given view the asset fits its reference within 1 dB of the single-image run's fit of
  its one view (the views do not compete);
- held out (``tests/scenes.held_out_scores``' 8 views against mode 0) it is no worse than the
  single-image run within the runs' spread (0.5 dB). The printed gain is the issue's figure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from multi_reference import run, truth_psnr_at  # noqa: E402
from scenes import make_test_object, write_object_glb  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dreamgaussian"])
def test_a_back_image_fixes_the_back_and_keeps_the_front(tmp_path, method):
    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    single = run(method, [], 0, tmp_path, glb, mesh)
    both = run(method, [(180.0, 0.0)], 0, tmp_path, glb, mesh)
    back = [truth_psnr_at(r["job_dir"], mesh, [(180.0, 0.0)], r["radius"])[0] for r in (single, both)]
    print(f"{method}: held-out {single['held_out']:.2f} -> {both['held_out']:.2f} dB "
          f"({both['held_out'] - single['held_out']:+.2f}); at the back {back[0]:.2f} -> {back[1]:.2f} dB; "
          f"fit {single['fit']} -> {both['fit']}")
    assert back[1] >= back[0] + 1.5, back
    assert min(both["fit"]) >= single["fit"][0] - 1.0, (single["fit"], both["fit"])
    assert both["held_out"] >= single["held_out"] - 0.5, (single["held_out"], both["held_out"])
