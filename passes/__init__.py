"""FX graph passes: find the attention of a captured HF causal LM and rewrite it into dustin ops."""

from .backend import DustinBackend, run_passes
from .errors import PassError
from .linear import LinearChooser, PackedWeights, pack_linears
from .match import AttentionMatch, find_attention
from .report import PassReport
from .rewrite import EXPORT_OPS, RewritePlan, rewrite_attention
from .verify import verify_graph

__all__ = [
    "AttentionMatch",
    "DustinBackend",
    "EXPORT_OPS",
    "LinearChooser",
    "PackedWeights",
    "PassError",
    "PassReport",
    "RewritePlan",
    "find_attention",
    "pack_linears",
    "rewrite_attention",
    "run_passes",
    "verify_graph",
]
