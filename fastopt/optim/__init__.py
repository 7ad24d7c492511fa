"""Fused drop-in replacements for ``torch.optim`` optimizers, and parameter averaging."""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .ema import EMA, ema_multi_avg_fn
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["EMA", "SGD", "Adagrad", "Adam", "AdamW", "RMSprop", "ema_multi_avg_fn"]
