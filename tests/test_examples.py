"""Every script in examples/ runs end to end (eager backend, small sizes) and passes its own checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUNS = {  # script: (arguments, text its output must contain)
    "quickstart.py": (["--backend", "eager", "--context", "160", "--new-tokens", "12"],
                      "== mode=exact: rows equal to the target's greedy decoding: [True, True]"),
    "local_checkpoints.py": (["--backend", "eager"], "equal to target.generate(): True"),
    "calibrate_profile.py": (["--backend", "eager"], "tokens equal to target greedy 1.00"),
    "export.py": (["--context", "120", "--new-tokens", "10"], "loaded bundle == target.generate(): True"),
    "export_tensorrt.py": ([], "lowered verify program: 0 dustin ops left"),
    "inspect_pass.py": ([], "declined scaled_dot_product_attention: unsupported mask: a torch.float32 mask"),
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script, tmp_path):
    args, expected = RUNS[script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert expected in result.stdout, result.stdout[-3000:]
