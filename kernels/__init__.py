"""Fused ops: torch reference (CPU path) and Triton (CUDA)."""
