"""Optimiser parameter groups and learning-rate schedules of the official recipes.

Learning-rate multipliers and freezing name the parameter groups each model declares (`model.parameter_groups()`:
CAT-Seg's `backbone`, `visual_prompts` and `cost_aggregation`; LSeg's `image_encoder`, `reassemble_stage`, `decoder`
and `text_encoder`), never parameter names.

CAT-Seg (detectron2's `build_optimizer` with the CAT-Seg config): AdamW at 2e-4; the backbone at 0.01x; weight decay
1e-4, but 0 for every parameter of a normalisation layer and of an embedding table; frozen parameters are not in the
optimiser; cosine decay to 0 over the run with no warm-up; the gradients of the whole model clipped to L2 norm 0.01
(done by the training loop).

LSeg: SGD with momentum 0.9 and weight decay 1e-4 on everything; the decoder (the original's "scratch") at 10x;
`poly` decay `(1 - epoch / epochs) ** 0.9`, stepped once per epoch; the CLIP text encoder frozen.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.engine.config import ConfigError, TrainConfig

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def group_of_parameters(model: nn.Module, groups: list[str], setting: str) -> dict[str, str]:
    """Parameter name -> the model's group, for the parameters of `groups`; a group the model does not declare is a
    `ConfigError` naming `setting` and the groups it has."""
    declared = model.parameter_groups()
    unknown = [group for group in groups if group not in declared]
    if unknown:
        raise ConfigError(
            f"{setting} names {', '.join(map(repr, unknown))}, which this {model.config.model_type} model does not "
            f"have; its parameter groups are {', '.join(declared)}"
        )
    return {name: group for group in groups for name in declared[group]}


def freeze_parameters(model: nn.Module, groups: list[str]) -> list[str]:
    """Set `requires_grad=False` on every parameter of the model's parameter `groups`; returns their names."""
    frozen = list(group_of_parameters(model, groups, "frozen_parameters"))
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    lr_multipliers: dict[str, float] | None = None,
    weight_decay_norm: float | None = None,
    weight_decay_embedding: float | None = None,
) -> list[dict]:
    """Optimiser groups of the trainable parameters, one per distinct (learning rate, weight decay).

    Args:
        lr_multipliers: parameter group (of `model.parameter_groups()`) -> multiplier of `learning_rate`; 1 for the
            groups it does not name.
        weight_decay_norm, weight_decay_embedding: decay of the parameters of normalisation layers and embedding
            tables (`None`: `weight_decay`).

    Each group also records `"lr_multiplier"` (the scheduler scales `"initial_lr"` = `learning_rate` x multiplier)
    and the `"names"` of its parameters, for inspection and tests.
    """
    lr_multipliers = lr_multipliers or {}
    group_of = group_of_parameters(model, list(lr_multipliers), "lr_multipliers")
    decay_of = {}
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            special = weight_decay_norm
        elif isinstance(module, nn.Embedding):
            special = weight_decay_embedding
        else:
            continue
        for parameter_name, _ in module.named_parameters(recurse=False):
            decay_of[f"{module_name}.{parameter_name}" if module_name else parameter_name] = (
                weight_decay if special is None else special
            )
    groups: dict[tuple[float, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        multiplier = lr_multipliers[group_of[name]] if name in group_of else 1.0
        decay = decay_of.get(name, weight_decay)
        group = groups.setdefault(
            (multiplier, decay),
            {
                "params": [],
                "names": [],
                "lr": learning_rate * multiplier,
                "lr_multiplier": multiplier,
                "weight_decay": decay,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters: check frozen_parameters and the fine-tuning policy")
    return list(groups.values())


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over `parameter_groups` with the recipe's settings (frozen parameters left out)."""
    groups = parameter_groups(
        model,
        config.learning_rate,
        config.weight_decay,
        config.lr_multipliers,
        config.weight_decay_norm,
        config.weight_decay_embedding,
    )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)


def lr_factor(schedule: str, progress: float, poly_power: float = 0.9) -> float:
    """The multiplier of every group's initial learning rate at `progress` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** poly_power
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, max_steps: int, steps_per_epoch: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per optimiser step: per-step progress, or per-epoch (`schedule_unit="epoch"`)."""
    if config.schedule_unit == "epoch":
        if not steps_per_epoch:
            raise ValueError("schedule_unit='epoch' needs a dataset of known length (not a stream)")
        epochs = math.ceil(max_steps / steps_per_epoch)
        progress = lambda step: (step // steps_per_epoch) / epochs
    else:
        progress = lambda step: step / max_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.lr_schedule, progress(step), config.poly_power)
    )


__all__ = [
    "build_optimizer",
    "build_scheduler",
    "freeze_parameters",
    "group_of_parameters",
    "lr_factor",
    "parameter_groups",
]
