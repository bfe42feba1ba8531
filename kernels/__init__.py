"""Fused ops of sparse verification: torch reference (the CPU path and the spec) and Triton (CUDA).

Each op lives in ``kernels/<op>/`` (``reference.py``, ``triton.py``, registration as ``torch.library.custom_op
("dustin::<op>")``). Importing this package registers the ops; it never imports triton (the CUDA kernels are loaded
on first use).
"""

from .score_heads import score_heads, score_heads_into
from .select_tokens import select_tokens
from .sparse_attention import sparse_attention
from .dense_attention import dense_attention

__all__ = ["dense_attention", "score_heads", "score_heads_into", "select_tokens", "sparse_attention"]
