"""Self-supervised pretraining of content encoders (SimCLR for images, SimCSE for text)."""

from recsys_cl.pretrain.config import SimCLRConfig, SimCSEConfig

__all__ = ["SimCLRConfig", "SimCSEConfig"]
