"""Optimizers by name, and the parameter groups that decide which weights decay."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.errors import unknown_choice
from harness.recipe import OptimizerSpec
from harness.registry import Registry

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


@OPTIMIZERS.register("sgd")
def sgd(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD with momentum, the seed's and the ResNet paper's optimizer."""
    return torch.optim.SGD(groups, lr=spec.effective_lr, momentum=spec.momentum,
                           nesterov=spec.nesterov and spec.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Adam with L2 weight decay folded into the gradient, as ``torch.optim.Adam`` does."""
    return torch.optim.Adam(groups, lr=spec.effective_lr, betas=spec.betas, eps=spec.eps)


@OPTIMIZERS.register("adamw")
def adamw(groups: ParamGroups, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW: decoupled weight decay (Loshchilov & Hutter 2019)."""
    return torch.optim.AdamW(groups, lr=spec.effective_lr, betas=spec.betas, eps=spec.eps)


def parameter_groups(model: nn.Module, spec: OptimizerSpec) -> ParamGroups:
    """Split parameters into a decayed and an undecayed group by ``spec.decay_excludes``."""
    for kind in spec.decay_excludes:
        if kind not in _PARAM_KINDS:
            raise unknown_choice("optimizer.decay_excludes entry", kind, _PARAM_KINDS)
    tests = [_PARAM_KINDS[kind] for kind in spec.decay_excludes]
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                excluded = any(test(module, name) for test in tests)
                (no_decay if excluded else decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Build the optimizer named by ``spec`` over ``model``'s parameters."""
    return OPTIMIZERS.get(spec.name)(parameter_groups(model, spec), spec)

