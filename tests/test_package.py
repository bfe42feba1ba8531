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


def test_the_kernels_folder_imported_as_a_top_level_package_registers_nothing():
    """From the repository root (on sys.path under ``python -m``), transformers imports ``kernels`` while probing for
    the Hugging Face package of that name; the ops must stay the ones dustin registered."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch, dustin; "
            "before = torch.ops.dustin.sparse_attention.default._op; import kernels; "
            "assert not hasattr(kernels, 'sparse_attention'); "
            "assert torch.ops.dustin.sparse_attention.default._op is before; print('ok')")
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
