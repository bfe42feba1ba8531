"""dustin: long-context speculative decoding with sparse verification, built as a torch.compile pass.

    import dustin
    model = dustin.compile(target, draft)                 # any HF causal LM pair sharing a tokenizer
    out = model.generate(input_ids, max_new_tokens=256)   # out.sequences, out.stats
"""

from .calibrate import calibrate
from .config import DustinConfig
from .errors import DustinError, ModelPairError, PassError, ProfileError
from .model import DustinModel, compile
from .profile import DustinProfile
from .stats import GenerateOutput, GenerateStats

__all__ = [
    "DustinConfig",
    "DustinError",
    "DustinModel",
    "DustinProfile",
    "GenerateOutput",
    "GenerateStats",
    "ModelPairError",
    "PassError",
    "ProfileError",
    "calibrate",
    "compile",
]
__version__ = "0.1.0"
