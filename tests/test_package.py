"""Packaging facts: one import package from three folders, and a light import."""

from __future__ import annotations

import os
import subprocess
import sys


def test_import_dustin_does_not_import_triton_inductor_or_tensorrt():
    code = ("import sys, dustin, dustin.passes, dustin.kernels; "
            "bad = [m for m in ('triton', 'torch._inductor', 'torch_tensorrt') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_three_folders_map_onto_one_package():
    import dustin
    import dustin.kernels
    import dustin.passes

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.path.dirname(dustin.__file__) == os.path.join(root, "dustin_compile")
    assert os.path.dirname(dustin.passes.__file__) == os.path.join(root, "passes")
    assert os.path.dirname(dustin.kernels.__file__) == os.path.join(root, "kernels")
    assert set(dustin.__all__) >= {"compile", "DustinConfig", "DustinModel", "calibrate"}
