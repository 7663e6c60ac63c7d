"""Spiking vision transformers: QKFormer, Spikingformer, SGLFormer and their ancestor Spikformer,
one definition each.

Importing this package registers every published variant with timm::

    import models, timm
    model = timm.create_model("qkformer_10_384", T=4)

``models.VARIANTS`` lists them; :func:`load_checkpoint` loads the authors' checkpoints safely, and
``pretrained=True`` loads a file, a converted folder or an ``hf_hub:`` id (models/pretrained.py).
"""
from .checkpoint import CheckpointError, load_checkpoint, safe_load
from . import options  # noqa: F401  (an attribute even when engine/config.py loaded it first)
from .neuron import LIF, reset_net
from .options import ATTENTION_ORDERS, RuntimeOptions
from .runtime import apply as apply_options
from .runtime import set_activation_memory, set_attention_order, set_backend
from .qkformer import QKFormer
from .sglformer import SGLFormer
from .spikformer import Spikformer
from .spikingformer import Spikingformer
from .variants import VARIANTS, build

__all__ = ["QKFormer", "Spikingformer", "SGLFormer", "Spikformer", "VARIANTS", "build", "LIF", "reset_net",
           "set_backend", "set_attention_order", "set_activation_memory", "ATTENTION_ORDERS",
           "load_checkpoint", "safe_load", "CheckpointError", "RuntimeOptions", "apply_options"]
