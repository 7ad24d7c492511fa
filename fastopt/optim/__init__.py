"""Fused drop-in replacements for ``torch.optim`` optimizers, and parameter averaging."""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .clip import clip_grad_norm_, grad_norm
from .ema import EMA, ema_multi_avg_fn
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["EMA", "SGD", "Adagrad", "Adam", "AdamW", "RMSprop", "clip_grad_norm_", "ema_multi_avg_fn", "grad_norm"]
