"""Fused drop-in replacements for ``torch.optim`` optimizers."""

from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
