"""Fused drop-in replacements for ``torch.optim`` optimizers, and parameter averaging."""

from .adam import Adam, AdamW
from .ema import EMA, ema_multi_avg_fn
from .rmsprop import RMSprop

__all__ = ["EMA", "Adam", "AdamW", "RMSprop", "ema_multi_avg_fn"]
