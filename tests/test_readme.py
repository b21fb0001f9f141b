"""README's two set-up commands are the ones CI runs, and the CPU install cannot take PyPI's CUDA
build of torch (issue 28, item 4)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: the two commands.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_readmes_two_commands():
    install, tests = _setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci, (install, tests)


def test_the_cpu_install_takes_torch_from_pytorchs_cpu_index():
    install, _ = _setup_commands()
    torch_step = next(step for step in install.split(" && ") if "pip install torch" in step)
    assert "torch==2.13.0+cpu" in torch_step.split()  # only PyTorch's CPU index has the +cpu build
    assert "https://download.pytorch.org/whl/cpu" in torch_step.split()
    assert "+cpu --extra-index-url" in (ROOT / "README.md").read_text().replace("\n", " ")  # the try-out says it too
