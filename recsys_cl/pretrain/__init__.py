"""Self-supervised pretraining of content encoders (SimCLR for images)."""

from recsys_cl.pretrain.config import SimCLRConfig

__all__ = ["SimCLRConfig"]
