"""Fused ops of sparse verification: torch reference (the CPU path and the spec) and Triton (CUDA).

One folder per op family, each with ``reference.py`` (pure torch), ``triton.py`` (CUDA, where there is one) and its
registration as ``torch.library.custom_op("dustin::<op>")`` in ``__init__.py``:

| folder       | op (``torch.ops.dustin.*``)          | public function                     |
|--------------|--------------------------------------|-------------------------------------|
| ``sparse``   | ``sparse_attention``                 | ``sparse_attention``                |
| ``dense``    | ``dense_attention``, ``causal_mask`` | ``dense_attention``, ``causal_mask``|
| ``scores``   | ``score_heads``, ``score_heads_into``| ``score_heads``, ``score_heads_into``|
| ``selection``| ``select_tokens``                    | ``select_tokens``                   |
| ``linear``   | ``packed_linear``, ``packed_linear_cat`` (CPU, MKL) | ``packed_linear``, ``packed_linear_cat``, ``pack_weight`` |
| ``linear``   | ``int8_linear`` (CPU, C++; defined by cpu_ext.cpp once built) | ``linear.int8.int8_linear``, ``linear.int8.available`` |

Importing this package registers every op; it never imports triton (the CUDA kernels load on first use).
"""

if __name__ == "dustin.kernels":
    from .dense import causal_mask, dense_attention
    from .linear import pack_weight, packed_linear, packed_linear_cat
    from .scores import score_heads, score_heads_into
    from .selection import select_tokens
    from .sparse import sparse_attention

    __all__ = ["causal_mask", "dense_attention", "pack_weight", "packed_linear", "packed_linear_cat", "score_heads",
               "score_heads_into", "select_tokens", "sparse_attention"]
# Else this folder was imported as a top-level ``kernels``: with the repository root on sys.path (``python -m ...``
# run there), transformers probes for the Hugging Face ``kernels`` package by importing it. Register nothing then:
# a second registration would define every dustin op again as new objects.
