#!/usr/bin/env bash
# Builds .venv-trt, the TensorRT venv (separate from .venv: it needs torch 2.14, dustin's main venv pins 2.13 CPU).
#   torch==2.14.1               a CUDA build (~5.7 GB with its nvidia-* wheels): expected, there is no CPU build of it
#   torch-tensorrt-rtx==2.14.0  TensorRT-RTX; the standard torch-tensorrt wheel pulls its libraries from NVIDIA's
#                               own index, which is not reachable here
#   transformers==5.23.0, numpy, tqdm, pytest; dustin itself editable without deps (its torch pin is 2.13)
# No GPU is needed to build engines (scripts/tensorrt/check_engines.py); running them needs one.
# Usage: scripts/tensorrt/setup-venv.sh [VENV_DIR]   (default .venv-trt; a finished venv is left as it is)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-trt}
if [ -f "$VENV/.installed" ]; then
    echo "$VENV is ready"
    exit 0
fi
start=$(date +%s)
python3 -m venv "$VENV"
pip_install() {  # quiet; drops pip's notes about local index folders that lack a package
    "$VENV/bin/pip" install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}
pip_install torch==2.14.1
pip_install torch-tensorrt-rtx==2.14.0 torch==2.14.1
pip_install transformers==5.23.0 'numpy>=1.26' 'tqdm>=4.66' 'pytest>=8'
pip_install --no-deps -e .
# torch_tensorrt asks the GPU for its compute capability at import: on a machine without one, import it the way
# dustin.export_tensorrt(allow_cpu_build=True) does (dustin_compile/export_tensorrt.py).
"$VENV/bin/python" -c "from dustin.export_tensorrt import import_torch_tensorrt as i; import torch, transformers; \
t = i(allow_cpu_build=True); print('torch', torch.__version__, 'torch_tensorrt', t.__version__, \
'transformers', transformers.__version__)"
touch "$VENV/.installed"
echo "$VENV built in $(( $(date +%s) - start )) s"
