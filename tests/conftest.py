# TRITON_INTERPRET must be set before triton or torch._dynamo is first imported: Triton kernels then run on CPU
# tensors through the interpreter, which is how CI (no GPU) tests them.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
