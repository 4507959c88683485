"""How the model's weights are stepped: the optimizers and schedules `model.optimizer` and `model.scheduler` name,
and gradient clipping that keeps the fused optimizer step (docs/speed.md)."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch


def gradient_scaler(trainer: L.Trainer) -> Any:
    """The precision plugin's gradient scaler (16-mixed), or None (32-true, bf16-mixed, 64-true)."""
    return getattr(trainer.precision_plugin, "scaler", None)


def clip_for_fused_step(trainer: L.Trainer, optimizer: torch.optim.Optimizer, clip_val: Optional[float],
                        algorithm: Optional[str]) -> bool:  # fmt: skip
    """Clip the gradients of a fused optimizer where no gradient scaler is involved, as Lightning's plain precision
    plugin clips them (torch.nn.utils), and say so; False: leave it to Lightning."""
    if not clip_val or gradient_scaler(trainer) is not None or not optimizer.defaults.get("fused"):
        return False
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, clip_val, foreach=True)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, clip_val, foreach=True)
    return True


def _fast(foreach: bool) -> dict[str, bool]:
    return {"foreach": True} if foreach else {"fused": True}


# The optimizers model.optimizer names: (parameters, lr, weight_decay, foreach) -> optimizer. Adam and AdamW are fused
# (one kernel for all parameters) unless a gradient scaler must unscale before clipping (foreach).
OPTIMIZERS = {
    "adam": lambda params, lr, wd, foreach: torch.optim.Adam(params, lr=lr, weight_decay=wd, **_fast(foreach)),
    "adamw": lambda params, lr, wd, foreach: torch.optim.AdamW(params, lr=lr, weight_decay=wd, **_fast(foreach)),
    # Smoothing 0.9, as in the sequential-MNIST papers.
    "rmsprop": lambda params, lr, wd, foreach: torch.optim.RMSprop(params, lr=lr, alpha=0.9, weight_decay=wd),
    "sgd": lambda params, lr, wd, foreach: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
}

# The schedules model.scheduler names, stepped every batch: (optimizer, peak lr, total steps, warm-up share).
SCHEDULERS = {
    "onecycle": lambda opt, lr, total, warmup: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=warmup),
    "cosine": lambda opt, lr, total, warmup: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
}
