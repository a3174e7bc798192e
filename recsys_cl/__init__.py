"""recsys_cl: contrastive two-tower retrieval (train -> export -> index -> candidates)."""

__version__ = "0.1.0"
