"""CAT-Seg behaviour beyond fixture parity: config, fine-tuning policies, text handling, top-k cap, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from tests.tiny_models import tiny_catseg_config, tiny_clip_config
from transformers import CLIPConfig, CLIPModel

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation, CatSegModel

# Learnable parameters of the ViT-L/14@336 model per CLIP fine-tuning policy: the paper's Table 6, and the spec's
# exact counts (5.8M, 7.0M, 393.2M, 134.9M, 70.3M, 70.3M, 56.7M, 19.9M, 70.3M).
TABLE_6_LARGE = {
    "freeze": 5_782_753,
    "prompt": 7_011_553,
    "full": 393_146_593,
    "attention": 134_892_769,
    "qk": 70_270_177,
    "kv": 70_270_177,
    "qv_image": 56_705_249,
    "qv_text": 19_938_529,
    "qv": 70_270_177,
}


def pixels(batch: int = 1, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def prompts(num_classes: int, length: int = 8) -> torch.Tensor:
    """Official-style token ids: start token, words, end-of-text 49407, zero padding."""
    ids = torch.zeros(num_classes, length, dtype=torch.long)
    ids[:, 0] = 49406
    for row in range(num_classes):
        words = 1 + row % 3
        ids[row, 1 : 1 + words] = torch.arange(320 + 7 * row, 320 + 7 * row + words)
        ids[row, 1 + words] = 49407
    return ids


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CatSegForSemanticSegmentation(tiny_catseg_config()).eval()


@pytest.mark.parametrize("policy", sorted(TABLE_6_LARGE))
def test_learnable_parameters_reproduce_table_6(policy):
    prompt = dict(prompt_depth=24, prompt_length=50) if policy == "prompt" else {}
    with torch.device("meta"):
        model = CatSegForSemanticSegmentation(CatSegConfig.vit_large_patch14_336(clip_finetune=policy, **prompt))
    assert model.learnable_parameter_counts()["total"] == TABLE_6_LARGE[policy]


def test_released_base_model_trains_25_12m_parameters():
    with torch.device("meta"):
        model = CatSegForSemanticSegmentation(CatSegConfig.vit_base_patch16_384())
    counts = model.learnable_parameter_counts()
    assert counts == {"clip": 20_447_232, "cost_aggregation": 4_668_641, "total": 25_115_873}
    attention = model.catseg.clip.vision_model.encoder.layers[0].self_attn
    assert attention.q_proj.weight.requires_grad and attention.v_proj.weight.requires_grad
    assert not attention.k_proj.weight.requires_grad and not attention.q_proj.bias.requires_grad


def test_presets_match_the_released_models():
    base, large = CatSegConfig.vit_base_patch16_384(), CatSegConfig.vit_large_patch14_336()
    assert (base.image_size, base.guidance_layers, base.feature_resolution) == (384, [3, 7], 24)
    assert (large.image_size, large.guidance_layers, large.feature_resolution) == (336, [7, 15], 24)
    assert base.backbone_config.vision_config.image_size == 224  # the stored 14x14 position table loads unchanged
    assert large.backbone_config.projection_dim == 768 and large.backbone_config.vision_config.patch_size == 14


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(clip_finetune="lora"), "not a CAT-Seg fine-tuning policy"),
        (dict(guidance_layers=[0, 3]), "before the last one"),
        (dict(decoder_dims=[16, 8]), "multiples of 16"),
        (dict(image_size=70), "not a multiple of the backbone's patch size"),
        (dict(clip_finetune="prompt"), "needs prompt_depth > 0"),
        (dict(guidance_layers=[1]), "one entry per decoder stage"),
        (dict(decoder_guidance_proj_dims=[16, 4]), "must each be smaller than the input width"),
    ],
)
def test_config_rejects_inconsistent_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_catseg_config(**overrides)


def test_config_round_trip(tmp_path):
    config = tiny_catseg_config(class_pooling_size=3, prompt_template="a {} photo")
    config.save_pretrained(tmp_path)
    loaded = CatSegConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.backbone_config, CLIPConfig)


@torch.no_grad()
def test_forward_shapes_and_default_outputs(model):
    out = model(pixels(2), input_ids=prompts(3))
    assert list(out.keys()) == ["logits"]  # only what the Trainer should gather at evaluation
    assert out.logits.shape == (2, 3, 16, 16)
    hidden = model(pixels(2), input_ids=prompts(3), output_hidden_states=True)
    assert hidden.dense_image_features.shape == (2, 16, 4, 4)
    assert hidden.cost_volume.shape == (2, 3, 4, 4)
    assert hidden.aggregated_features.shape == (2, 16, 3, 4, 4)
    assert hidden.text_embeds.shape == (3, 16)
    torch.testing.assert_close(hidden.logits, out.logits)


@torch.no_grad()
def test_precomputed_text_embeds_give_identical_logits(model):
    ids = prompts(4)
    text_embeds = model.get_text_features(ids).pooler_output
    torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(4))
    expected = model(pixels(), input_ids=ids).logits
    assert torch.equal(model(pixels(), text_embeds=text_embeds).logits, expected)
    per_image = text_embeds.expand(1, -1, -1)
    torch.testing.assert_close(model(pixels(), text_embeds=per_image).logits, expected)


@torch.no_grad()
def test_text_encoding_stops_at_the_end_token_without_changing_features(model):
    ids = F.pad(prompts(3), (0, 69))  # official zero padding to 77
    full = model.catseg.clip.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(
        model.get_text_features(ids).pooler_output, F.normalize(full, dim=-1), atol=1e-6, rtol=1e-5
    )
    # The transformers tokenizer pads with the end token and gives a mask instead: same features.
    hf_ids = ids.masked_fill(ids == 0, 49407)
    mask = torch.zeros_like(ids)
    for row in range(3):
        mask[row, : int((ids[row] == 49407).nonzero()[0]) + 1] = 1
    torch.testing.assert_close(
        model.get_text_features(hf_ids, mask).pooler_output,
        model.get_text_features(ids).pooler_output,
        atol=1e-6,
        rtol=1e-5,
    )


@torch.no_grad()
def test_vocabularies_above_max_classes_keep_the_best_matching_classes(model):
    ids = prompts(11)
    out = model(pixels(2), input_ids=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 11, 16, 16) and out.selected_classes.shape == (2, 8)
    for image in range(2):
        kept = out.selected_classes[image]
        scores = out.cost_volume[image].flatten(1).amax(-1)
        assert set(kept.tolist()) == set(scores.topk(8).indices.tolist())
        dropped = torch.ones(11, dtype=torch.bool)
        dropped[kept] = False
        assert torch.all(out.logits[image, dropped] == -100.0)
        # With exactly max_classes classes nothing is padded, so the kept classes alone give the same logits.
        alone = model(pixels(2)[image : image + 1], input_ids=ids[kept]).logits[0]
        torch.testing.assert_close(out.logits[image, kept], alone, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_top_k_pruning_gives_kept_classes_their_sub_vocabulary_logits(model):
    ids = prompts(7)
    full = model(pixels(), input_ids=ids, output_hidden_states=True)
    pruned = model(pixels(), input_ids=ids, output_hidden_states=True, top_k_classes=3)
    kept = pruned.selected_classes[0]
    assert kept.tolist() == sorted(full.cost_volume[0].flatten(1).amax(-1).topk(3).indices.tolist())
    dropped = torch.ones(7, dtype=torch.bool)
    dropped[kept] = False
    assert torch.all(pruned.logits[0, dropped] == -100.0)
    # Still padded to max_classes=8, so exactly the official model run on the 3 kept classes, not the full-set logits.
    alone = model(pixels(), input_ids=ids[kept]).logits[0]
    torch.testing.assert_close(pruned.logits[0, kept], alone, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(pruned.logits[0, kept], full.logits[0, kept], atol=1e-4)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_speed_options_must_be_positive_integers(model, value):
    with pytest.raises(ValueError, match=f"cost_map_chunk_size={value!r} must be a positive integer, or None"):
        model.set_execution_options(cost_map_chunk_size=value)
    with pytest.raises(ValueError, match=f"top_k_classes={value!r} must be a positive integer, or None"):
        model(pixels(), input_ids=prompts(3), top_k_classes=value)


def test_runtime_options_are_not_saved_and_old_configurations_still_load(model, tmp_path, caplog):
    model.set_execution_options(fast_paths=False, cost_map_chunk_size=3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not {"fast_paths", "cost_map_chunk_size", "top_k_classes", "clip_config"} & set(saved)
    model.set_execution_options()
    # A configuration written before backbones were pluggable and runtime options left it.
    saved["clip_config"] = saved.pop("backbone_config")
    saved.update(fast_paths=True, cost_map_chunk_size=None, top_k_classes=None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = CatSegForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert reloaded.config.backbone_config.model_type == "clip" and reloaded.backbone_prefix_path == "catseg.clip"
    assert not hasattr(reloaded.config, "fast_paths")
    with torch.no_grad():
        assert torch.equal(
            reloaded(pixels(), input_ids=prompts(3)).logits, model(pixels(), input_ids=prompts(3)).logits
        )


@torch.no_grad()
def test_padding_tokens_take_part_in_class_aggregation(model):
    ids = prompts(3)
    before = model(pixels(), input_ids=ids).logits
    padding = model.catseg.layers[0].class_aggregation.padding_tokens
    shift = torch.randn_like(padding)  # not a constant: LayerNorm would remove that
    padding.add_(shift)
    try:
        after = model(pixels(), input_ids=ids).logits
    finally:
        padding.sub_(shift)
    assert (after - before).abs().max() > 1e-3


@torch.no_grad()
def test_class_pooling_follows_train_and_eval_mode(model):
    ids = prompts(3)
    eval_logits = model(pixels(), input_ids=ids).logits
    torch.testing.assert_close(eval_logits, model(pixels(), input_ids=ids, class_pooling_size=1).logits)
    model.train()
    try:
        train_logits = model(pixels(), input_ids=ids).logits
    finally:
        model.eval()
    torch.testing.assert_close(train_logits, model(pixels(), input_ids=ids, class_pooling_size=2).logits)
    assert (train_logits - eval_logits).abs().max() > 1e-4


def test_loss_keeps_ignored_pixels_as_all_zero_targets(model):
    labels = torch.randint(0, 3, (1, 20, 20))
    labels[0, :5] = 255
    out = model(pixels(), input_ids=prompts(3), labels=labels)
    logits = F.interpolate(out.logits, size=(20, 20), mode="bilinear", align_corners=False)
    targets = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    targets[:, :, :5] = 0
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(logits, targets))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(1, 1, 64, 64), input_ids=prompts(2)), r"must be \(batch_size, 3, height, width\)"),
        (lambda m: m(torch.randn(3, 64, 64), input_ids=prompts(2)), r"must be \(batch_size, 3, height, width\)"),
        (lambda m: m(pixels()), "exactly once"),
        (lambda m: m(pixels(), input_ids=prompts(2), text_embeds=torch.randn(2, 16)), "exactly once"),
        (lambda m: m(pixels(), input_ids=prompts(2)[None]), "one vocabulary shared by the batch"),
        (lambda m: m(pixels(), text_embeds=torch.randn(2, 7)), r"text_embeds must be \(num_classes, 16\)"),
        (lambda m: m(pixels(), text_embeds=torch.randn(0, 16)), "vocabulary is empty"),
        (lambda m: m(pixels(), input_ids=prompts(2), labels=torch.full((1, 8, 8), 5)), r"values \[5\] outside the 2"),
        (lambda m: m(pixels(), input_ids=prompts(2), labels=torch.zeros(8, 8, dtype=torch.long)), "labels must be"),
    ],
)
def test_bad_inputs_get_clear_errors(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config()).train()
    labels = torch.randint(0, 3, (2, 16, 16))

    def gradients():
        model.zero_grad()
        model(pixels(2), input_ids=prompts(3), labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_deep_visual_prompt_tuning_trains_only_prompts_in_clip():
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config(clip_finetune="prompt", prompt_depth=3, prompt_length=2))
    assert model.learnable_parameter_counts()["clip"] == 3 * 2 * 32
    labels = torch.randint(0, 3, (1, 16, 16))
    model.train()(pixels(), input_ids=prompts(3), labels=labels).loss.backward()
    assert model.catseg.visual_prompt_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.catseg.clip.parameters())
    before = model.eval()(pixels(), input_ids=prompts(3)).logits
    with torch.no_grad():
        model.catseg.visual_prompt_tokens.normal_(std=3.0)
    assert (model(pixels(), input_ids=prompts(3)).logits - before).abs().max() > 1e-3


def test_from_vision_language_model_starts_from_the_given_clip_weights(tmp_path):
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**tiny_clip_config(vision_layers=12)))
    clip.save_pretrained(tmp_path / "clip")
    model = CatSegForSemanticSegmentation.from_vision_language_model(
        str(tmp_path / "clip"), window_size=12, hidden_dim=16, decoder_dims=[16, 16], decoder_guidance_proj_dims=[4, 4]
    )
    assert model.config.image_size == 384 and model.config.guidance_layers == [3, 7]
    for name, tensor in clip.state_dict().items():
        assert torch.equal(model.catseg.clip.state_dict()[name], tensor), name
    assert model.learnable_parameter_counts()["clip"] == 2 * (12 + 2) * 32 * 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384), input_ids=prompts(2)).logits.shape == (1, 2, 96, 96)


def test_save_and_reload_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = CatSegForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded(pixels(), input_ids=prompts(3)).logits, model(pixels(), input_ids=prompts(3)).logits
        )
    assert reloaded.learnable_parameter_counts() == model.learnable_parameter_counts()
    base = CatSegModel.from_pretrained(tmp_path)
    torch.testing.assert_close(base.cost_embedding.weight, model.catseg.cost_embedding.weight)


@pytest.mark.parametrize("pooling", [1, 2])
@torch.no_grad()
def test_chunks_bound_memory_without_changing_logits(model, pooling):
    ids = prompts(7)
    expected = model(pixels(2), input_ids=ids, class_pooling_size=pooling).logits
    # One class of the two images per spatial and decoder chunk; the class aggregation attends 3 of the 16 (or of
    # the 4 pooled) positions at a time.
    model.set_execution_options(cost_map_chunk_size=3)
    try:
        chunked = model(pixels(2), input_ids=ids, class_pooling_size=pooling).logits
    finally:
        model.set_execution_options()
    torch.testing.assert_close(chunked, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("policy", ["qv", "attention", "full", "kv"])
def test_every_trainable_parameter_gets_a_gradient(policy, tmp_path):
    """What DDP with find_unused_parameters=False needs; also after from_pretrained + apply_clip_finetune_policy."""
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config(clip_finetune=policy))
    last = model.catseg.clip.vision_model.encoder.layers[-1].self_attn
    assert not last.q_proj.weight.requires_grad and not last.k_proj.weight.requires_grad  # the dense path skips them
    model.save_pretrained(tmp_path)
    loaded = CatSegForSemanticSegmentation.from_pretrained(tmp_path)
    loaded.apply_clip_finetune_policy()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name for name, p in loaded.named_parameters() if p.requires_grad} == trainable
    loaded.train()
    loaded(pixels(2), input_ids=prompts(3), labels=torch.zeros(2, 16, 16, dtype=torch.long)).loss.backward()
    assert [name for name, p in loaded.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_float64_computes_the_float32_function(attn_implementation):
    # SDPA on CPU misreads a float32 additive mask beside float64 queries from 16 tokens on (torch 2.13), silently:
    # the shifted-window mask must come in the states' dtype. An 8x8 grid gives 4x4 windows.
    torch.manual_seed(0)
    config = tiny_catseg_config(image_size=128, window_size=4)
    config._attn_implementation = attn_implementation
    model = CatSegForSemanticSegmentation(config).eval()
    double = CatSegForSemanticSegmentation(config).eval()
    double.load_state_dict(model.state_dict())
    double.double()
    with torch.no_grad():
        single = model(pixel_values=pixels(size=128), input_ids=prompts(3)).logits
        reference = double(pixel_values=pixels(size=128).double(), input_ids=prompts(3)).logits
    assert reference.dtype == torch.float64
    torch.testing.assert_close(single, reference.float(), atol=1e-5, rtol=1e-4)
