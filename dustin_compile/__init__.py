"""dustin: long-context speculative decoding with sparse verification, built as a torch.compile pass.

    import dustin
    model = dustin.compile(target, draft)                 # any HF causal LM pair sharing a tokenizer
    out = model.generate(input_ids, max_new_tokens=256)   # out.sequences, out.stats
"""

from .calibrate import calibrate
from .config import DustinConfig
from .draftvocab import frequent_tokens
from .errors import DustinError, ModelPairError, PassError, ProfileError
from .exported import ExportedDustin, load_exported
from .export_tensorrt import export_tensorrt
from .exporter import export
from .hf_generate import generate
from .model import DustinModel, compile
from .profile import DustinProfile
from .stats import GenerateOutput, GenerateStats
from .version import __version__

__all__ = [
    "DustinConfig",
    "DustinError",
    "DustinModel",
    "DustinProfile",
    "ExportedDustin",
    "GenerateOutput",
    "GenerateStats",
    "ModelPairError",
    "PassError",
    "ProfileError",
    "calibrate",
    "compile",
    "export",
    "export_tensorrt",
    "frequent_tokens",
    "generate",
    "load_exported",
]
