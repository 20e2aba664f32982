"""Optimizers by name, and the parameter groups that decide which weights decay."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.core.errors import unknown_choice
from harness.core.registry import Registry
from harness.recipe import OptimizerSpec

ParamGroups = list[dict]
OPTIMIZERS: Registry[Callable[[ParamGroups, OptimizerSpec], torch.optim.Optimizer]] = Registry(
    "optimizer"
)

# Parameter kinds that ``OptimizerSpec.decay_excludes`` may name, with how to recognise them.
_PARAM_KINDS: dict[str, Callable[[nn.Module, str], bool]] = {
    "bias": lambda module, name: name == "bias",
    "norm": lambda module, name: isinstance(
        module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm
    ),
}


def fused_on_cuda(groups: ParamGroups) -> dict[str, bool]:
    """Return ``{"fused": True}`` when every parameter is on a CUDA device, else nothing.

    The fused kernels update all parameters in one launch instead of one or more per tensor,
    which matters most for small models whose steps are launch-bound. Elsewhere torch's default
    (``foreach`` where supported) is already the fast path.
    """
    params = [p for group in groups for p in group["params"]]
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


@OPTIMIZERS.register("sgd")
def sgd(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD with momentum, the seed's and the ResNet paper's optimizer."""
    return torch.optim.SGD(groups, lr=spec.effective_lr, momentum=spec.momentum,
                           nesterov=spec.nesterov and spec.momentum > 0, **fused_on_cuda(groups))


@OPTIMIZERS.register("adam")
def adam(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Adam with L2 weight decay folded into the gradient, as ``torch.optim.Adam`` does."""
    return torch.optim.Adam(groups, lr=spec.effective_lr, betas=spec.betas, eps=spec.eps,
                            **fused_on_cuda(groups))


@OPTIMIZERS.register("adamw")
def adamw(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW: decoupled weight decay (Loshchilov & Hutter 2019)."""
    return torch.optim.AdamW(groups, lr=spec.effective_lr, betas=spec.betas, eps=spec.eps,
                             **fused_on_cuda(groups))


def parameter_groups(model: nn.Module, spec: OptimizerSpec) -> ParamGroups:
    """Group the trainable parameters by weight decay and lr.

    Kinds named in ``spec.decay_excludes`` get no weight decay. Biases of norm layers get
    ``spec.norm_bias_lr_factor`` times the lr, and their weight decay divided by the same factor,
    so the decay each step applies (lr × decay) stays what it was. The first group is the
    decayed one at the base lr, present even when empty.
    """
    for kind in spec.decay_excludes:
        if kind not in _PARAM_KINDS:
            raise unknown_choice("optimizer.decay_excludes entry", kind, _PARAM_KINDS)
    tests = [_PARAM_KINDS[kind] for kind in spec.decay_excludes]
    is_norm = _PARAM_KINDS["norm"]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {(spec.weight_decay, 1.0): []}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            factor = spec.norm_bias_lr_factor if name == "bias" and is_norm(module, name) else 1.0
            decay = 0.0 if any(test(module, name) for test in tests) else spec.weight_decay
            groups.setdefault((decay / factor, factor), []).append(param)
    out = []
    for (decay, factor), params in groups.items():
        if params or not out:
            group = {"params": params, "weight_decay": decay}
            if factor != 1.0:
                group["lr"] = spec.effective_lr * factor
            out.append(group)
    return out


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Build the optimizer named by ``spec`` over ``model``'s parameters."""
    return OPTIMIZERS.get(spec.name)(parameter_groups(model, spec), spec)

