"""The optimiser groups and schedules of the official recipes, and the recipe files and command line."""

import argparse
import math

import pytest
import torch
from tests.tiny_models import save_tiny_siglip, tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegForSemanticSegmentation
from training.engine.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    list_recipes,
    read_recipe,
)
from training.engine.loop import build_model, build_processor
from training.engine.optim import build_optimizer, build_scheduler, freeze_parameters, parameter_groups


def group_of(groups: list[dict], name: str) -> dict:
    (group,) = [g for g in groups if name in g["names"]]
    return group


def test_catseg_groups_follow_the_official_recipe():
    model = CatSegForSemanticSegmentation(tiny_catseg_config())  # clip_finetune "qv", the released policy
    config = TrainConfig()  # the recipe's defaults: AdamW 2e-4, CLIP x0.01, decay 1e-4, 0 for norms and embeddings
    optimizer = build_optimizer(model, config)
    groups = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    names = [name for group in groups for name in group["names"]]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable)  # each trainable parameter once, frozen ones not at all
    clip = "catseg.clip.vision_model.encoder.layers.0.self_attn."
    assert f"{clip}k_proj.weight" not in names and f"{clip}q_proj.bias" not in names
    for name in (
        f"{clip}q_proj.weight",
        f"{clip}v_proj.weight",
        "catseg.clip.text_model.encoder.layers.1.self_attn.v_proj.weight",
    ):
        assert (group_of(groups, name)["lr"], group_of(groups, name)["weight_decay"]) == pytest.approx((2e-6, 1e-4))
    norms = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    norm_parameters = [f"{m}.{p}" for m in norms for p in ("weight", "bias") if f"{m}.{p}" in names]
    assert norm_parameters and all(group_of(groups, n)["weight_decay"] == 0.0 for n in norm_parameters)
    assert all(group_of(groups, n)["lr"] == 2e-4 for n in norm_parameters if ".clip." not in n)
    padding = [n for n in names if n.endswith("padding_tokens")]
    biases = [n for n in names if n.endswith(".bias") and n not in norm_parameters]
    assert padding and biases
    for name in padding + biases:  # plain parameters and biases decay, as in detectron2's optimiser
        assert (group_of(groups, name)["lr"], group_of(groups, name)["weight_decay"]) == (2e-4, 1e-4)


@pytest.mark.parametrize("setting", ["lr_multipliers", "frozen_parameters"])
def test_a_group_the_model_does_not_declare_is_refused_by_name(setting):
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    build = {
        "lr_multipliers": lambda: parameter_groups(model, 2e-4, 1e-4, {"catseg.clip.": 0.01}),
        "frozen_parameters": lambda: freeze_parameters(model, ["catseg.clip."]),
    }[setting]
    with pytest.raises(
        ConfigError,
        match=f"^{setting} names 'catseg.clip.', which this catseg model does not have; "
        "its parameter groups are backbone, visual_prompts, cost_aggregation$",
    ):
        build()


def test_fully_tuned_clip_keeps_its_multiplier_and_undecayed_norms():
    model = CatSegForSemanticSegmentation(tiny_catseg_config(clip_finetune="full"))
    groups = parameter_groups(model, 2e-4, 1e-4, {"backbone": 0.01}, weight_decay_norm=0.0)
    norm = group_of(groups, "catseg.clip.text_model.encoder.layers.0.layer_norm1.weight")
    assert norm["lr"] == pytest.approx(2e-6) and norm["weight_decay"] == 0.0


def test_lseg_groups_freeze_the_text_encoder_and_speed_up_the_decoder():
    model = LSegForSemanticSegmentation(tiny_lseg_config(arch_option=1))
    recipe = TrainConfig(**read_recipe("lseg_vit_l_ade20k"))
    frozen = freeze_parameters(model, recipe.frozen_parameters)
    assert frozen and all(name.startswith("lseg.text_encoder.") for name in frozen)
    optimizer = build_optimizer(model, recipe)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    groups = optimizer.param_groups
    assert not any(n.startswith("lseg.text_encoder.") for g in groups for n in g["names"])
    assert group_of(groups, "lseg.dpt.encoder.layer.0.attention.attention.query.weight")["lr"] == 2.5e-4
    assert group_of(groups, "lseg.neck.reassemble_stage.layers.0.projection.weight")["lr"] == 2.5e-4
    for name in (
        "lseg.neck.convs.0.weight",
        "lseg.pixel_embeddings.projection.weight",
        "spatial_regularization.weight",
    ):
        assert group_of(groups, name)["lr"] == pytest.approx(2.5e-3)
    batch_norm = next(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad
    )
    assert group_of(groups, f"{batch_norm}.weight")["weight_decay"] == 1e-4  # SGD decays everything


def lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_decays_to_zero_per_step_and_poly_steps_per_epoch():
    parameters = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": parameters[:1], "lr": 1.0}, {"params": parameters[1:], "lr": 0.01}])
    history = lrs(build_scheduler(optimizer, TrainConfig(), max_steps=4), optimizer, 5)
    expected = [0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(5)]
    assert [h[0] for h in history] == pytest.approx(expected) and history[-1] == [0.0, 0.0]
    assert [h[1] for h in history] == pytest.approx([0.01 * e for e in expected])  # multipliers kept
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    poly = TrainConfig(lr_schedule="poly", schedule_unit="epoch", max_steps=None, num_train_epochs=2)
    history = [h[0] for h in lrs(build_scheduler(optimizer, poly, max_steps=6, steps_per_epoch=3), optimizer, 6)]
    assert history == pytest.approx([1, 1, 1, 0.5**0.9, 0.5**0.9, 0.5**0.9])


def test_every_shipped_recipe_loads_and_every_setting_has_a_flag():
    assert list_recipes() == [
        "catseg_siglip2_b16_coco_stuff",
        "catseg_siglip2_l16_coco_stuff",
        "catseg_vit_b_coco_stuff",
        "catseg_vit_l_coco_stuff",
        "lseg_vit_l_ade20k",
    ]
    for name in list_recipes():
        TrainConfig(**read_recipe(name))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = config_from_args(
        parser.parse_args(
            [
                "--config",
                "catseg_vit_l_coco_stuff",
                "--learning-rate",
                "1e-4",
                "--lr-multipliers",
                '{"backbone": 0.1}',
                "--gradient-checkpointing",
                "true",
                "--max-grad-norm",
                "none",
                "--class-names",
                "names.txt",
                "--scale-range",
                "[0.75, 1.5]",
                "--model-config",
                '{"clip_finetune": "full"}',
            ]
        )
    )
    assert config.clip_model == "openai/clip-vit-large-patch14-336" and config.learning_rate == 1e-4
    assert config.lr_multipliers == {"backbone": 0.1} and config.gradient_checkpointing is True
    assert config.max_grad_norm is None and config.class_names == "names.txt" and config.scale_range == [0.75, 1.5]
    assert config.model_config == {"clip_finetune": "full"} and config.max_steps == 80000


@pytest.mark.parametrize(
    ("recipe", "depth"), [("catseg_siglip2_b16_coco_stuff", 12), ("catseg_siglip2_l16_coco_stuff", 24)]
)
def test_siglip2_recipes_build_catseg_as_training_does_on_a_stand_in_of_the_same_depth(recipe, depth, tmp_path):
    # The checkpoint is swapped for a narrow random SigLIP with the B/16 (12 blocks) or L/16 (24 blocks) depth:
    # everything else is the recipe, built by the training loop's own functions.
    config = TrainConfig(**{**read_recipe(recipe), "clip_model": str(save_tiny_siglip(tmp_path, vision_layers=depth))})
    model = build_model(config).eval()
    processor = build_processor(model, config)
    assert model.config.backbone_config.model_type == "siglip" and model.config.image_size == 384
    # The recipe's explicit guidance layers are those CAT-Seg derives for the depth: blocks at one and two thirds.
    assert (
        model.config.guidance_layers == [depth // 3 - 1, 2 * depth // 3 - 1] == config.model_config["guidance_layers"]
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and ".siglip." in name}
    assert trainable and all(name.endswith(("q_proj.weight", "v_proj.weight", "in_proj_weight")) for name in trainable)
    inputs = processor(
        images=[torch.zeros(3, 48, 64, dtype=torch.uint8)], text=["Cat", "wooden floor"], return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[-2:] == (384, 384) and inputs["input_ids"].shape[-1] == 64
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 2, 96, 96)  # CAT-Seg's output: 4x the 24x24 grid


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="push_to_hub needs hub_model_id"):
        TrainConfig(push_to_hub=True)
    (tmp_path / "bad.yaml").write_text("learning_rate: 1e-4\nlearnig_rate: 2\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['learnig_rate'\]"):
        read_recipe(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        read_recipe("catseg_vit_h")
