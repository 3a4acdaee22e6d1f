"""LSeg behaviour beyond fixture parity: any input size, vocabularies, regularisation, loss, errors, building."""

import pytest
import torch
import torch.nn.functional as F
from tests.tiny_models import tiny_clip_config, tiny_lseg_config
from transformers import CLIPConfig, CLIPModel, DPTConfig, DPTModel, ViTConfig, ViTModel

from modeling_lseg import LSegConfig, LSegForSemanticSegmentation, LSegModel
import modeling_lseg.modeling_lseg as modeling_lseg_module
from modeling_lseg.modeling_lseg import (
    dpt_neck_channels_last,
    onednn_linear,
    packed_onednn_weight,
    pixel_projection_before_upsampling,
    scaled_correlation_in_row_blocks,
    vit_encoder_onednn,
)


def pixels(batch: int = 1, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch * height + width)) * 2 - 1


def label_ids(num_labels: int, length: int = 8) -> torch.Tensor:
    """Official-style token ids: start 49406, one or two words, end-of-text 49407, zero padding."""
    ids = torch.zeros(num_labels, length, dtype=torch.long)
    ids[:, 0] = 49406
    for row in range(num_labels):
        words = 1 + row % 2
        ids[row, 1 : 1 + words] = torch.arange(400 + 11 * row, 400 + 11 * row + words)
        ids[row, 1 + words] = 49407
    return ids


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LSegForSemanticSegmentation(tiny_lseg_config()).eval()


def test_defaults_are_the_released_demo_model_with_its_parameter_count():
    config = LSegConfig()
    dpt = config.dpt_config
    assert (dpt.hidden_size, dpt.num_hidden_layers, dpt.num_attention_heads, dpt.patch_size, dpt.image_size) == (
        1024, 24, 16, 16, 384,
    )  # fmt: skip
    assert dpt.backbone_out_indices == [5, 11, 17, 23] and dpt.readout_type == "project"
    assert dpt.layer_norm_eps == 1e-6 and dpt.use_batch_norm_in_fusion_residual and not dpt.use_bias_in_fusion_residual
    assert dpt.neck_hidden_sizes == [256, 512, 1024, 1024] and dpt.fusion_hidden_size == 256
    assert config.clip_config.text_config.hidden_size == 512 and config.clip_config.projection_dim == 512
    assert (config.arch_option, config.correlation_temperature, config.ignore_index) == (0, 0.07, 255)
    with torch.device("meta"):
        demo = LSegForSemanticSegmentation(config)
        regularised = LSegForSemanticSegmentation(LSegConfig(arch_option=2))
    # The spec's count for DPTModel + DPTNeck + head1 + CLIPTextModelWithProjection, less the final ViT LayerNorm
    # that LSeg discards (2 x 1024); the block adds a 3x3 kernel.
    assert sum(p.numel() for p in demo.parameters()) == 406_262_272 - 2 * 1024
    assert sum(p.numel() for p in regularised.parameters()) == 406_262_272 - 2 * 1024 + 10


def test_config_round_trips_and_names_the_remote_code(tmp_path):
    config = tiny_lseg_config(arch_option=1, block_depth=3, activation="tanh")
    config.save_pretrained(tmp_path)
    loaded = LSegConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.dpt_config.layer_norm_eps == 1e-6 and loaded.dpt_config.neck_hidden_sizes == [8, 16, 32, 32]
    assert loaded.auto_map == {
        "AutoConfig": "configuration_lseg.LSegConfig",
        "AutoModel": "modeling_lseg.LSegForSemanticSegmentation",
        "AutoModelForSemanticSegmentation": "modeling_lseg.LSegForSemanticSegmentation",
    }


def test_logits_have_the_input_resolution_and_one_channel_per_label(model):
    with torch.no_grad():
        outputs = model(pixels(2, 64, 96), input_ids=label_ids(3), output_hidden_states=True)
        base = model.lseg(pixels(2, 64, 96), input_ids=label_ids(3))
    assert outputs.logits.shape == (2, 3, 64, 96)
    assert base.correlation.shape == (2, 3, 32, 48) and base.text_embeds.shape == (3, 16)
    assert outputs.pixel_embeds.shape == (2, 16, 32, 48)
    torch.testing.assert_close(outputs.pixel_embeds.norm(dim=1), torch.ones(2, 32, 48))
    assert len(outputs.hidden_states) == 5 and outputs.hidden_states[0].shape == (2, 1 + 4 * 6, 32)
    # Cosine similarities divided by 0.07.
    assert base.correlation.abs().max() <= 1 / 0.07 + 1e-4
    torch.testing.assert_close(
        base.correlation, torch.einsum("bdhw,nd->bnhw", base.pixel_embeds, base.text_embeds) / 0.07
    )
    plain = model(pixels(2, 64, 96), input_ids=label_ids(3))
    assert plain.pixel_embeds is None and plain.hidden_states is None


def test_sides_that_are_not_multiples_of_32_are_padded_with_black_and_cropped_back(model):
    # The original crashes on such sizes (its fusion adds maps of different sizes); here the image is padded at
    # the bottom and right with black (-1) to a multiple of 32, and the outputs are cropped back to the image.
    image = pixels(1, 50, 71)
    padded = F.pad(image, (0, 96 - 71, 0, 64 - 50), value=-1.0)
    with torch.no_grad():
        outputs = model(image, input_ids=label_ids(3))
        base = model.lseg(image, input_ids=label_ids(3))
        reference = model.lseg(padded, input_ids=label_ids(3))
    assert outputs.logits.shape == (1, 3, 50, 71)
    assert base.correlation.shape == (1, 3, 25, 36) and base.pixel_embeds.shape == (1, 16, 25, 36)
    torch.testing.assert_close(base.correlation, reference.correlation[..., :25, :36])
    expected = F.interpolate(base.correlation, size=(50, 71), mode="bilinear", align_corners=True)
    torch.testing.assert_close(outputs.logits, expected, atol=0, rtol=0)
    assert model(pixels(1, 20, 9), input_ids=label_ids(2)).logits.shape == (1, 2, 20, 9)


def test_a_half_precision_model_takes_float32_images():
    model = LSegForSemanticSegmentation(tiny_lseg_config()).eval()
    with torch.no_grad():
        expected = model(pixels(), input_ids=label_ids(3)).logits
        logits = model.to(torch.bfloat16)(pixels(), input_ids=label_ids(3)).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_precomputed_text_embeds_give_the_same_logits(model):
    with torch.no_grad():
        expected = model(pixels(), input_ids=label_ids(4)).logits
        text_embeds = model.get_text_features(label_ids(4)).pooler_output
        assert text_embeds.shape == (4, 16)
        torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(4))
        # Normalising the unit vectors again moves them by up to an ulp, hence not atol=0.
        torch.testing.assert_close(model(pixels(), text_embeds=text_embeds).logits, expected)
        # Any scale: they are normalised again.
        torch.testing.assert_close(model(pixels(), text_embeds=3 * text_embeds).logits, expected)


def test_each_image_can_have_its_own_vocabulary(model):
    # The zero-shot protocol pairs every image with ["others", its class].
    images = pixels(2)
    with torch.no_grad():
        vocabularies = [model.get_text_features(label_ids(4)[rows]).pooler_output for rows in ([0, 1], [0, 3])]
        batched = model(images, text_embeds=torch.stack(vocabularies)).logits
        for index, vocabulary in enumerate(vocabularies):
            alone = model(images[index : index + 1], text_embeds=vocabulary).logits
            torch.testing.assert_close(batched[index : index + 1], alone)


def test_tokenizer_style_padding_and_attention_mask_do_not_change_the_text_features(model):
    # HF's CLIP tokenizer pads with the end-of-text id and a zero mask; the official one pads with zeros.
    official = label_ids(3, length=10)
    hf = official.clone()
    hf[official == 0] = 49407
    mask = torch.ones_like(official)
    for row in range(3):
        mask[row, int((official[row] == 49407).nonzero()[0]) + 1 :] = 0
    torch.testing.assert_close(
        model.get_text_features(hf, mask).pooler_output, model.get_text_features(official).pooler_output
    )


def test_the_text_encoder_stays_frozen_and_the_image_side_trains():
    model = LSegForSemanticSegmentation(tiny_lseg_config()).train()
    labels = torch.randint(0, 3, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    model(pixels(2), input_ids=label_ids(3), labels=labels).loss.backward()
    assert all(p.grad is None for p in model.lseg.text_encoder.parameters())
    # Frozen as DDP sees it: every trainable parameter gets a gradient, so find_unused_parameters is not needed.
    assert not any(p.requires_grad for p in model.lseg.text_encoder.parameters())
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(p.grad is not None for p in model.lseg.dpt.encoder.parameters())
    assert model.lseg.neck.reassemble_stage.readout_projects[0][0].weight.grad.abs().sum() > 0
    assert model.lseg.pixel_embeddings.projection.weight.grad.abs().sum() > 0


def test_loss_is_the_cross_entropy_over_labelled_pixels(model):
    labels = torch.randint(0, 3, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    labels[:, :10] = 255
    with torch.no_grad():
        outputs = model(pixels(2), input_ids=label_ids(3), labels=labels)
        expected = F.cross_entropy(outputs.logits, labels, ignore_index=255)
        as_tuple = model(pixels(2), input_ids=label_ids(3), labels=labels, return_dict=False)
    torch.testing.assert_close(outputs.loss, expected)
    assert list(outputs.keys())[0] == "loss" and torch.equal(as_tuple[0], outputs.loss)
    # Labels at another resolution are compared with resized logits, as transformers' segmentation heads do.
    small = labels[:, ::2, ::2]
    with torch.no_grad():
        loss = model(pixels(2), input_ids=label_ids(3), labels=small).loss
    resized = F.interpolate(outputs.logits, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss, F.cross_entropy(resized, small, ignore_index=255))


def regularise(logits, weight, bias, add_maximum, depth, activation):
    """The spec's spatial regularisation, written out: one 3x3 kernel per label map, shared over depth."""
    for step in range(max(depth, 1)):
        filtered = torch.stack(
            [F.conv2d(logits[:, c : c + 1], weight, bias, padding=1)[:, 0] for c in range(logits.shape[1])], 1
        )
        if add_maximum:
            filtered = filtered + logits.max(dim=1, keepdim=True).values
        logits = activation(filtered) if step < max(depth, 1) - 1 else filtered
    return logits


@pytest.mark.parametrize(
    "arch_option, block_depth, activation, function",
    [(1, 3, "lrelu", F.leaky_relu), (2, 2, "tanh", torch.tanh), (1, 0, "relu", F.relu), (2, 1, "relu", F.relu)],
)
def test_spatial_regularisation_blocks(arch_option, block_depth, activation, function):
    torch.manual_seed(0)
    config = tiny_lseg_config(arch_option=arch_option, block_depth=block_depth, activation=activation)
    model = LSegForSemanticSegmentation(config).eval()
    block = model.spatial_regularization
    assert [name for name, _ in block.named_parameters()] == ["weight", "bias"]  # one kernel, shared by depth
    with torch.no_grad():
        block.weight.copy_(torch.randn(1, 1, 3, 3) / 3)
        block.bias.fill_(0.1)
        outputs = model(pixels(), input_ids=label_ids(3))
        correlation = model.lseg(pixels(), input_ids=label_ids(3)).correlation
    expected = regularise(correlation, block.weight, block.bias, arch_option == 1, block_depth, function)
    expected = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(outputs.logits, expected, atol=1e-5, rtol=1e-5)


def test_a_new_depthwise_block_starts_as_the_identity():
    model = LSegForSemanticSegmentation(tiny_lseg_config(arch_option=2, block_depth=1)).eval()
    with torch.no_grad():
        correlation = model.lseg(pixels(), input_ids=label_ids(2)).correlation
        torch.testing.assert_close(model.spatial_regularization(correlation), correlation, atol=0, rtol=0)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(pixel_values=torch.zeros(1, 4, 64, 64), input_ids=label_ids(2)), "(batch_size, 3, height, width)"),
        (dict(pixel_values=torch.zeros(3, 64, 64), input_ids=label_ids(2)), "got shape (3, 64, 64)"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64, dtype=torch.uint8), input_ids=label_ids(2)), "floating point"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64)), "exactly once"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2), text_embeds=torch.ones(2, 16)), "once"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), text_embeds=torch.ones(2, 512)), "(num_labels, 16)"),
        (dict(pixel_values=torch.zeros(2, 3, 64, 64), text_embeds=torch.ones(3, 2, 16)), "batch_size=2"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), text_embeds=torch.ones(0, 16)), "empty"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2)[None]), "one vocabulary shared"),
        (
            dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2), attention_mask=torch.ones(2, 3)),
            "attention_mask has shape (2, 3)",
        ),
        (
            dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2), labels=torch.full((1, 64, 64), 2)),
            "[2]",
        ),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2), labels=torch.zeros(2, 64, 64)), "integ"),
        (dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=label_ids(2), labels=torch.zeros(64, 64)), "integer"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, inputs, message):
    with pytest.raises(ValueError) as error:
        model(**inputs)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(arch_option=3), "arch_option must be 0"),
        (dict(activation="gelu"), "activation must be one of relu, lrelu, tanh"),
        (dict(correlation_temperature=0.0), "correlation_temperature must be positive"),
        (dict(dpt_config=dict(is_hybrid=True)), "DPT-Hybrid"),
        (dict(dpt_config=dict(backbone_out_indices=[5, 11, 17, 24])), "must be ViT blocks 0..23"),
        (dict(dpt_config=dict(neck_hidden_sizes=[256, 512, 1024])), "one backbone_out_indices"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        LSegConfig(**overrides)


def test_the_base_model_loads_from_a_segmentation_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path)
    base = LSegModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model.lseg(pixels(), input_ids=label_ids(2)).correlation
        torch.testing.assert_close(base(pixels(), input_ids=label_ids(2)).correlation, expected, atol=0, rtol=0)


@pytest.mark.parametrize("image_model", ["vit", "dpt"])
def test_from_pretrained_parts_starts_from_a_vit_or_dpt_and_a_clip_checkpoint(image_model, tmp_path):
    torch.manual_seed(0)
    vit_config = dict(
        hidden_size=32, num_hidden_layers=8, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    clip = CLIPModel(CLIPConfig(**tiny_clip_config(vision_layers=1)))
    if image_model == "vit":  # from checkpoint folders
        image_encoder = ViTModel(ViTConfig(**vit_config, layer_norm_eps=1e-12))
        image_encoder.save_pretrained(tmp_path / "image")
        clip.save_pretrained(tmp_path / "clip")
        model = LSegForSemanticSegmentation.from_pretrained_parts(tmp_path / "image", tmp_path / "clip", arch_option=2)
    else:  # from models in memory
        image_encoder = DPTModel(DPTConfig(**vit_config))
        model = LSegForSemanticSegmentation.from_pretrained_parts(image_encoder, clip, arch_option=2)
    dpt = model.config.dpt_config
    assert (dpt.hidden_size, dpt.num_hidden_layers, dpt.patch_size, dpt.image_size) == (32, 8, 8, 32)
    assert dpt.backbone_out_indices == [1, 3, 5, 7] and dpt.use_batch_norm_in_fusion_residual
    assert model.config.arch_option == 2 and model.config.clip_config.projection_dim == 16
    image = pixels(2, 32, 32)
    with torch.no_grad():  # the same ViT blocks, whatever their parameter names (LSeg has no final LayerNorm)
        expected = image_encoder.eval()(image, output_hidden_states=True).hidden_states
        torch.testing.assert_close(model.lseg.dpt.eval()(image, output_hidden_states=True).hidden_states, expected)
    clip_state = clip.state_dict()
    for name, tensor in model.lseg.text_encoder.state_dict().items():
        torch.testing.assert_close(tensor, clip_state[name], atol=0, rtol=0)
    assert model(pixels(1, 40, 40), input_ids=label_ids(2)).logits.shape == (1, 2, 40, 40)


def test_from_pretrained_parts_names_what_does_not_fit_a_given_config():
    vit_config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    image_encoder = ViTModel(vit_config)
    clip = CLIPModel(CLIPConfig(**tiny_clip_config(vision_layers=1)))
    with pytest.raises(ValueError, match=r"image_encoder checkpoint does not fit .*encoder\.layer\.2\."):
        LSegForSemanticSegmentation.from_pretrained_parts(image_encoder, clip, config=tiny_lseg_config())


def test_a_list_of_hidden_state_indices_selects_those_states(model):
    with torch.no_grad():
        every = model(pixels(), input_ids=label_ids(3), output_hidden_states=True).hidden_states
        chosen = model(pixels(), input_ids=label_ids(3), output_hidden_states=[0, 2, -1]).hidden_states
    assert len(chosen) == len(every) == 5
    assert [index for index, state in enumerate(chosen) if state is not None] == [0, 2, 4]
    torch.testing.assert_close(chosen[2], every[2])


def test_attentions_are_returned_on_request():
    model = LSegForSemanticSegmentation(tiny_lseg_config(attn_implementation="eager")).eval()
    with torch.no_grad():
        outputs = model(pixels(2), input_ids=label_ids(3), output_attentions=True)
        plain = model(pixels(2), input_ids=label_ids(3))
    assert len(outputs.attentions) == 4 and outputs.attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(2, 2, 17))
    assert plain.attentions is None
    torch.testing.assert_close(outputs.logits, plain.logits)


def test_get_text_features_returns_clip_style_outputs(model):
    with torch.no_grad():
        outputs = model.get_text_features(label_ids(3), output_hidden_states=True)
        raw = model.lseg.text_encoder(input_ids=label_ids(3)).text_embeds
    torch.testing.assert_close(outputs.pooler_output, F.normalize(raw, dim=-1))
    assert len(outputs.hidden_states) == 3 and outputs.last_hidden_state.shape[:2] == label_ids(3).shape


def test_the_unused_final_vit_layernorm_is_not_part_of_the_model(tmp_path, model):
    assert not any(".dpt.layernorm." in name for name in model.state_dict())
    # Folders saved while the model still had it load without complaint.
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state["lseg.dpt.layernorm.weight"] = torch.ones(32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = LSegForSemanticSegmentation.from_pretrained(tmp_path)
    torch.testing.assert_close(
        loaded.state_dict()["lseg.neck.convs.0.weight"], model.state_dict()["lseg.neck.convs.0.weight"]
    )


def _randomised_batch_norms(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine weights, so that a mistake in its layout shows."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                tensor.data.copy_(torch.randn(tensor.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("readout_type", ["project", "add", "ignore"])
def test_the_channels_last_neck_is_dpts_neck(readout_type):
    config = tiny_lseg_config()
    config.dpt_config.readout_type = readout_type
    torch.manual_seed(0)
    model = LSegModel(config)
    _randomised_batch_norms(model)
    images = pixels(2, 64, 96)  # a 4 x 6 patch grid, so height and width cannot be swapped unnoticed
    for training in (False, True):
        model.train(training)
        hidden_states = model.dpt(images, output_hidden_states=True).hidden_states
        hooked = [hidden_states[index + 1] for index in config.dpt_config.backbone_out_indices]
        results = []
        for neck in (dpt_neck_channels_last, lambda *args: model.neck(*args)[-1]):
            model.zero_grad()
            fused = neck(model.neck, hooked, 4, 6) if neck is dpt_neck_channels_last else neck(hooked, 4, 6)
            (fused * torch.linspace(-1, 1, fused.numel()).view_as(fused)).sum().backward(retain_graph=True)
            grads = {name: p.grad.clone() for name, p in model.neck.named_parameters() if p.grad is not None}
            results.append((fused, grads))
        (fast, fast_grads), (plain, plain_grads) = results
        assert fast.shape == plain.shape == (2, 16, 32, 48)
        assert fast.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast, plain)
        if training:
            # Through batch statistics the gradients cancel so much that fp32 gets them only to about 1e-4 of
            # their largest entry (either neck, against float64), so only the outputs are compared in training.
            continue
        assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 0
        # A gradient sums over every pixel of the batch: it is compared relative to its largest entry.
        for name, expected in plain_grads.items():
            scale = expected.abs().max()
            torch.testing.assert_close(fast_grads[name] / scale, expected / scale, msg=lambda text: f"{name}: {text}")


@pytest.mark.parametrize("batched_text", [False, True])
def test_the_row_block_correlation_is_the_scaled_product(batched_text):
    generator = torch.Generator().manual_seed(0)
    pixels = F.normalize(torch.randn(2, 37, 16, generator=generator), dim=-1)
    text = F.normalize(torch.randn(*((2,) if batched_text else ()), 5, 16, generator=generator), dim=-1)
    expected = (14.285714 * pixels) @ text.transpose(-1, -2)
    for block_rows in (8, 37, 64):  # a partial last block, one block, a block larger than the image
        torch.testing.assert_close(scaled_correlation_in_row_blocks(pixels, text, 14.285714, block_rows), expected)


def test_inference_and_training_give_the_same_correlation(model):
    # Without autograd the correlation goes through the row blocks and the normalisation in place; with it, the
    # plain form runs.
    with torch.no_grad():
        inference = model.lseg(pixels(2), input_ids=label_ids(3))
    training = model.lseg(pixels(2), input_ids=label_ids(3))
    assert training.correlation.requires_grad and not inference.correlation.requires_grad
    torch.testing.assert_close(inference.correlation, training.correlation)
    torch.testing.assert_close(inference.pixel_embeds, training.pixel_embeds)


def ran_onednn_linear(function) -> bool:
    with torch.profiler.profile() as profile:
        function()
    return any(event.name.startswith("mkldnn::_linear_pointwise") for event in profile.events())


@pytest.mark.parametrize("post_op", [None, "gelu", "residual"])
def test_the_onednn_linear_is_the_plain_composition_in_inference_and_under_autograd(post_op):
    generator = torch.Generator().manual_seed(0)
    hidden_states, residual = torch.randn(2, 37, 24, generator=generator), torch.randn(2, 37, 40, generator=generator)
    weight, bias = torch.randn(40, 24, generator=generator) / 5, torch.randn(40, generator=generator)
    plain = F.linear(hidden_states, weight, bias)
    plain = F.gelu(plain) if post_op == "gelu" else plain + residual if post_op == "residual" else plain
    kwargs = {"activation": "gelu"} if post_op == "gelu" else {"residual": residual} if post_op == "residual" else {}

    def fast():
        return onednn_linear(hidden_states, weight, bias, **kwargs)

    with torch.no_grad():
        torch.testing.assert_close(fast(), plain)
        if torch.backends.mkldnn.is_available():
            assert ran_onednn_linear(fast)
        with torch.backends.mkldnn.flags(enabled=False):  # the switch users have for oneDNN is respected
            assert not ran_onednn_linear(fast)
        # A slice of a larger weight, as the neck's readout projection passes (oneDNN gets a contiguous copy).
        wide = torch.cat([weight, torch.randn(40, 8, generator=generator)], dim=1)
        torch.testing.assert_close(onednn_linear(hidden_states, wide[:, :24], bias, **kwargs), plain)
    weight.requires_grad_(True)
    assert not ran_onednn_linear(fast)  # the oneDNN op has no backward
    torch.testing.assert_close(fast(), plain)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this build of torch")
def test_a_packed_weight_gives_the_same_products_is_repacked_when_it_changes_and_freed_with_it():
    generator = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(1, 37, 24, generator=generator)
    weight = torch.nn.Parameter(torch.randn(40, 24, generator=generator) / 5)
    bias = torch.randn(40, generator=generator)
    with torch.no_grad():
        for _ in range(2):  # packed on the first call, reused on the second
            torch.testing.assert_close(
                onednn_linear(hidden_states, weight, bias, pack=True), F.linear(hidden_states, weight, bias)
            )
        assert packed_onednn_weight(weight, 37) is packed_onednn_weight(weight, 37)
        weight.mul_(-2)  # an optimiser step or load_state_dict changes the weight in place
        torch.testing.assert_close(
            onednn_linear(hidden_states, weight, bias, pack=True), F.linear(hidden_states, weight, bias)
        )
    key = id(weight)
    assert key in modeling_lseg_module._PACKED_WEIGHTS
    del weight
    assert key not in modeling_lseg_module._PACKED_WEIGHTS


def test_execution_options_pack_the_vit_weights_and_switch_the_fast_paths_without_changing_logits(model):
    weights = {id(parameter) for name, parameter in model.named_parameters() if ".encoder.layer." in name}

    def logits_and_packed():
        modeling_lseg_module._PACKED_WEIGHTS.clear()
        with torch.no_grad():
            logits = model(pixels(), input_ids=label_ids(3)).logits
        return logits, weights & set(modeling_lseg_module._PACKED_WEIGHTS)

    try:
        packed, packed_weights = logits_and_packed()
        with torch.no_grad():
            model(pixels(), input_ids=label_ids(3))
        model.set_execution_options(pack_weights=False)  # frees the packed copies
        assert not weights & set(modeling_lseg_module._PACKED_WEIGHTS)
        unpacked, unpacked_weights = logits_and_packed()
        model.set_execution_options(fast_paths=False)
        plain, plain_weights = logits_and_packed()
    finally:
        model.set_execution_options()
    if torch.backends.mkldnn.is_available():
        assert len(packed_weights) == 6 * model.config.dpt_config.num_hidden_layers
    assert not unpacked_weights and not plain_weights
    torch.testing.assert_close(packed, plain)
    torch.testing.assert_close(unpacked, plain)
    with pytest.raises(ValueError, match="pack_weights='no' must be True or False"):
        model.set_execution_options(pack_weights="no")


def test_moving_or_casting_the_model_frees_its_packed_weights():
    torch.manual_seed(0)
    model = LSegForSemanticSegmentation(tiny_lseg_config()).eval()
    weights = {id(parameter) for parameter in model.parameters()}
    with torch.no_grad():
        model(pixels(), input_ids=label_ids(3))
    if torch.backends.mkldnn.is_available():
        assert weights & set(modeling_lseg_module._PACKED_WEIGHTS)
    model.to(torch.float64)  # the same parameter objects, new data: the packed copies would be stale
    assert not weights & set(modeling_lseg_module._PACKED_WEIGHTS)


def test_a_hooked_or_wrapped_vit_linear_keeps_the_plain_vit(model):
    # The fast path reads weights directly, so it would miss a hook (or PEFT's LoRA wrapper) on a ViT linear.
    dense = model.lseg.dpt.encoder.layer[0].output.dense
    with torch.no_grad():
        fast = model(pixels(), input_ids=label_ids(3)).logits
        handle = dense.register_forward_hook(lambda module, args, output: 2 * output)
        try:
            assert not model.lseg._inference_fast_paths({})
            hooked = model(pixels(), input_ids=label_ids(3)).logits
        finally:
            handle.remove()
        assert model.lseg._inference_fast_paths({})
    assert not torch.allclose(hooked, fast)


@pytest.mark.parametrize("hidden_act", ["gelu", "relu"])
def test_the_onednn_vit_encoder_is_transformers_encoder(hidden_act):
    config = tiny_lseg_config()
    config.dpt_config.hidden_act = hidden_act
    torch.manual_seed(0)
    model = LSegModel(config).eval()
    images = pixels(2, 64, 96)
    with torch.no_grad():
        expected = model.dpt(images, output_hidden_states=True).hidden_states
        embeddings = model.dpt.embeddings(images).last_hidden_states
        for pack in (False, True):
            outputs = vit_encoder_onednn(model.dpt.encoder, embeddings, pack=pack)
            assert len(outputs) == len(expected) - 1 == 4
            for output, plain in zip(outputs, expected[1:]):
                torch.testing.assert_close(output, plain)
    torch.testing.assert_close(embeddings, expected[0])


@pytest.mark.parametrize("readout_type", ["project", "add", "ignore"])
def test_projecting_before_upsampling_is_the_neck_then_the_pixel_projection(readout_type):
    config = tiny_lseg_config()
    config.dpt_config.readout_type = readout_type
    torch.manual_seed(0)
    model = LSegModel(config).eval()
    _randomised_batch_norms(model)
    images = pixels(2, 64, 96)  # a 4 x 6 patch grid, so height and width cannot be swapped unnoticed
    projection = model.pixel_embeddings.projection
    with torch.no_grad():
        hidden_states = model.dpt(images, output_hidden_states=True).hidden_states
        hooked = [hidden_states[index + 1] for index in config.dpt_config.backbone_out_indices]
        expected = projection(model.neck(hooked, 4, 6)[-1])
        fast = pixel_projection_before_upsampling(model.neck, projection, hooked, 4, 6)
    assert fast.shape == expected.shape == (2, 16, 32, 48)
    torch.testing.assert_close(fast, expected)


def test_the_inference_fast_paths_give_the_plain_outputs_and_hidden_states(model):
    # Without autograd the ViT and neck take their fast forms; with it (or when attention weights are asked for),
    # the plain modules.
    with torch.no_grad():
        fast = model(pixels(2), input_ids=label_ids(3), output_hidden_states=True)
    plain = model(pixels(2), input_ids=label_ids(3), output_hidden_states=True)
    assert len(fast.hidden_states) == len(plain.hidden_states) == 5
    for state, expected in zip(fast.hidden_states, plain.hidden_states):
        torch.testing.assert_close(state, expected)
    torch.testing.assert_close(fast.pixel_embeds, plain.pixel_embeds)
    torch.testing.assert_close(fast.logits, plain.logits)
