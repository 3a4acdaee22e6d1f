"""Each exact fast path of CAT-Seg computes what the paper's plain form beside it computes.

The plain forms are the paper's and the official code's: roll -> window partition -> window attention with the
guidance concatenated into queries and keys -> reverse (spatial aggregation); linear attention across classes padded
with learned tokens, the guidance concatenated into queries and keys (class aggregation); transposed-convolution
upsampling -> concatenated guidance -> convolution (upsampling decoder). Each module's `fast_path` picks between them.
"""

import contextlib
import threading
import time

import pytest
import torch
from tests.tiny_models import tiny_catseg_config
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_catseg.backbones_catseg import clip_block_onednn
from modeling_catseg.modeling_catseg import (
    CatSegClassAggregation,
    CatSegDecoderStage,
    CatSegLinearAttention,
    CatSegSpatialAggregation,
    CatSegUpsamplingDecoder,
    chunked,
    closed_form_padding_class_aggregation,
    folded_upsample_conv,
    folded_upsample_conv_terms,
    folded_upsampling_decoder,
    guidance_query_key,
    linear_activation,
    map_chunks_in_threads,
    single_threaded_workers,
    padded_linear_attention,
    padding_key_value,
    shared_guidance_spatial_aggregation,
    shared_guidance_swin_block,
    swin_guidance_term,
    window_order,
    window_partition,
    window_reverse,
)

EXACT = dict(atol=1e-5, rtol=1e-5)


# The fast paths take other kernels in inference (oneDNN linears, `out=` writes) than under autograd: both are tested.
GRAD_MODES = pytest.mark.parametrize(
    "grad_mode", [contextlib.nullcontext, torch.inference_mode], ids=["autograd", "inference"]
)


def config(**overrides):
    # An 8x8 grid with 4x4 windows: four windows, and a shift of 2 that brings tokens from different regions together.
    return tiny_catseg_config(image_size=128, window_size=4, max_classes=8, **overrides)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Random parameters everywhere (the default init leaves biases and padding tokens at zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.3)
    return module


def states(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))


def ran_onednn_linear(function) -> bool:
    with torch.profiler.profile() as profile:
        function()
    return any(event.name == "mkldnn::_linear_pointwise" for event in profile.events())


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_linear_activation_is_one_onednn_call_in_inference_and_plain_under_autograd(activation):
    linear = randomised(torch.nn.Linear(16, 24))
    hidden = states(2, 5, 16)
    projected = linear(hidden)
    assert (projected < -1).any() and (projected > 0).any()  # the activation matters
    plain = {None: projected, "gelu": torch.nn.functional.gelu(projected), "relu": torch.relu(projected)}[activation]

    def fused():
        return linear_activation(hidden, linear.weight, linear.bias, activation)

    with torch.inference_mode():
        torch.testing.assert_close(fused(), plain, **EXACT)
        if torch.backends.mkldnn.is_available():
            assert ran_onednn_linear(fused)
        with torch.backends.mkldnn.flags(enabled=False):  # the switch users have for oneDNN is respected
            assert not ran_onednn_linear(fused)
            torch.testing.assert_close(fused(), plain, **EXACT)
    # Under autograd it is the plain composition, and gradients reach the weights.
    assert not ran_onednn_linear(fused)
    fused().sum().backward()
    gradient = linear.weight.grad.clone()
    linear.zero_grad()
    plain.sum().backward()
    torch.testing.assert_close(gradient, linear.weight.grad, **EXACT)


def test_window_partition_and_reverse_are_inverse_and_row_major():
    grid = torch.arange(64.0).view(1, 8, 8, 1)
    windows = window_partition(grid, 4)
    assert windows.shape == (1, 4, 16, 1)
    assert windows[0, 1, :4, 0].tolist() == [4.0, 5.0, 6.0, 7.0]  # second window: top right, first row
    assert torch.equal(window_reverse(windows, 4, 8, 8), grid)


@pytest.mark.parametrize("shift", [False, True])
def test_window_order_is_roll_then_window_partition(shift):
    block = CatSegSpatialAggregation(config()).blocks[int(shift)]
    assert block.shift_size == (2 if shift else 0)
    grid = torch.randn(3, 8, 8, 5)
    rolled = torch.roll(grid, (-block.shift_size, -block.shift_size), dims=(1, 2))
    gathered = grid.flatten(1, 2).index_select(1, window_order(block)).view(3, 4, 16, 5)
    assert torch.equal(gathered, window_partition(rolled, 4))


@GRAD_MODES
@pytest.mark.parametrize("shift", [False, True])
def test_shared_guidance_swin_block_equals_the_swin_block(shift, grad_mode):
    spatial = randomised(CatSegSpatialAggregation(config()))
    block = spatial.blocks[int(shift)]
    hidden, guidance = states(2, 3, 8, 8, 16), states(2, 8, 8, 8)
    plain = block(hidden, guidance)
    with grad_mode():
        term = swin_guidance_term(block, guidance.flatten(1, 2).unsqueeze(1))
        fast = shared_guidance_swin_block(block, hidden.flatten(2, 3), term)
    torch.testing.assert_close(fast.view(plain.shape), plain, **EXACT)


def test_shared_guidance_spatial_aggregation_equals_the_plain_form_also_in_chunks():
    spatial = randomised(CatSegSpatialAggregation(config()))
    spatial.fast_path = False
    hidden, guidance = states(2, 5, 8, 8, 16), states(2, 8, 8, 8)
    plain = spatial(hidden, guidance)
    for chunk in (None, 2):  # one call, and chunks of one class of the two images
        spatial.cost_map_chunk_size = chunk
        torch.testing.assert_close(shared_guidance_spatial_aggregation(spatial, hidden, guidance), plain, **EXACT)
    spatial.fast_path = True
    torch.testing.assert_close(spatial(hidden, guidance), plain, **EXACT)


def test_padded_linear_attention_equals_attention_over_the_padded_sequence():
    attention = randomised(CatSegLinearAttention(dim=16, guidance_dim=8, num_heads=2))
    hidden, guidance = states(2, 4, 3, 16), states(2, 3, 8)
    padding_state, padding_guidance = states(16), states(8)
    length = 7
    padded_hidden = torch.cat([hidden, padding_state.expand(2, 4, length - 3, 16)], dim=2)
    padded_guidance = torch.cat([guidance, padding_guidance.expand(2, length - 3, 8)], dim=1)
    plain = attention(padded_hidden, padded_guidance[:, None].expand(-1, 4, -1, -1))[:, :, :3]
    guided = guidance_query_key(attention.q_proj, attention.k_proj, guidance.unsqueeze(1))
    padding = padding_key_value(attention, padding_state, padding_guidance)
    torch.testing.assert_close(padded_linear_attention(attention, hidden, guided, padding, length), plain, **EXACT)
    # Without padding tokens (a full sequence) the closed form adds nothing.
    full = attention(hidden, guidance[:, None].expand(-1, 4, -1, -1))
    torch.testing.assert_close(padded_linear_attention(attention, hidden, guided, padding, 3), full, **EXACT)


@GRAD_MODES
@pytest.mark.parametrize("pooling", [1, 2])
@pytest.mark.parametrize("classes", [3, 8])  # padded to max_classes=8, and not padded
def test_closed_form_padding_class_aggregation_equals_the_plain_form(pooling, classes, grad_mode):
    aggregation = randomised(CatSegClassAggregation(config()))
    aggregation.fast_path = False
    hidden, guidance = states(2, classes, 8, 8, 16), states(2, classes, 8)
    plain = aggregation(hidden, guidance, pooling)
    for chunk in (None, 3):  # one call, and a few positions at a time
        aggregation.cost_map_chunk_size = chunk
        with grad_mode():
            fast = closed_form_padding_class_aggregation(aggregation, hidden, guidance, pooling)
        torch.testing.assert_close(fast, plain, **EXACT)


@pytest.mark.parametrize("size", [3, 6])
def test_folded_upsample_conv_equals_transposed_convolution_then_conv1(size):
    stage = randomised(CatSegDecoderStage(in_channels=12, out_channels=16, guidance_channels=4))
    hidden = torch.randn(2, 3, 12, size, size)
    guidance = torch.randn(2, 4, 2 * size, 2 * size)
    plain = stage(hidden, guidance)
    plain.sum().backward()
    plain_gradient = stage.upsample.weight.grad.clone()
    stage.zero_grad()

    terms = folded_upsample_conv_terms(stage, guidance)
    upsampled = folded_upsample_conv(stage, hidden, terms)
    # The convolutions after it run on channels-last input.
    assert upsampled.is_contiguous(memory_format=torch.channels_last)
    fast = stage.refine(upsampled)
    fast.sum().backward()
    assert plain.shape == (2, 3, 16, 2 * size, 2 * size)
    torch.testing.assert_close(fast, plain.flatten(0, 1), **EXACT)
    torch.testing.assert_close(stage.upsample.weight.grad, plain_gradient, atol=1e-4, rtol=1e-5)
    with torch.inference_mode():  # written in place with `out=`, which autograd cannot record
        torch.testing.assert_close(stage.refine(folded_upsample_conv(stage, hidden, terms)), fast, **EXACT)


@GRAD_MODES
def test_folded_upsampling_decoder_equals_the_plain_decoder_also_in_chunks(grad_mode):
    decoder = randomised(CatSegUpsamplingDecoder(config()))
    decoder.fast_path = False
    aggregated = states(2, 5, 8, 8, 16)
    guidance_features = (states(2, 32, 8, 8), 2 * states(2, 32, 8, 8))
    plain = decoder(aggregated, guidance_features)
    assert plain.shape == (2, 5, 32, 32)
    layers = zip(decoder.guidance_upsamplers, decoder.guidance_projections, guidance_features)
    projected = [torch.relu(project(upsample(features))) for upsample, project, features in layers]
    for chunk in (None, 2):
        decoder.cost_map_chunk_size = chunk
        with grad_mode():
            fast = folded_upsampling_decoder(decoder, aggregated, projected)
        torch.testing.assert_close(fast, plain, **EXACT)


def test_linear_activation_fuses_a_residual_or_an_activation_not_both():
    linear = randomised(torch.nn.Linear(16, 24))
    hidden, residual = states(2, 5, 16), states(2, 5, 24, 1)[..., 0]
    with torch.inference_mode():
        fused = linear_activation(hidden, linear.weight, linear.bias, residual=residual)
        torch.testing.assert_close(fused, linear(hidden) + residual, **EXACT)
        if torch.backends.mkldnn.is_available():
            assert ran_onednn_linear(lambda: linear_activation(hidden, linear.weight, linear.bias, residual=residual))
    with pytest.raises(ValueError, match="not both"):
        linear_activation(hidden, linear.weight, linear.bias, "gelu", residual=residual)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])  # OpenAI CLIP's; OpenCLIP's exact GELU is fused
def test_clip_block_onednn_is_the_clip_block(hidden_act):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, hidden_act=hidden_act)
    block = randomised(CLIPEncoderLayer(vision)).eval()
    hidden = states(2, 17, 32)
    with torch.inference_mode():
        torch.testing.assert_close(clip_block_onednn(block, hidden), block(hidden, None), **EXACT)
        if torch.backends.mkldnn.is_available():
            assert ran_onednn_linear(lambda: clip_block_onednn(block, hidden))


@pytest.mark.parametrize("finetune", ["attention", "prompt"])
def test_the_clip_tower_takes_its_onednn_form_only_in_inference_and_on_plain_linears(finetune):
    prompts = dict(prompt_depth=2, prompt_length=3) if finetune == "prompt" else {}
    model = randomised(CatSegForSemanticSegmentation(config(clip_finetune=finetune, **prompts))).eval()
    backbone = model.catseg.backbone
    pixel_values = torch.randn(2, 3, 128, 128)

    def features():
        output = model.catseg.backbone.dense_image_features(
            pixel_values, model.config.guidance_layers, model.catseg.visual_prompt_tokens, output_hidden_states=True
        )
        return [output.dense_image_features, *output.guidance_features, *output.hidden_states]

    def uses_onednn() -> bool:
        return torch.backends.mkldnn.is_available() and ran_onednn_linear(features)

    with torch.no_grad():
        fast = features()
        assert uses_onednn()
        model.set_execution_options(fast_paths=False)
        assert not backbone.fast_path and not uses_onednn()
        plain = features()
        model.set_execution_options()
    assert len(fast) == len(plain) == 1 + 2 + 5  # dense, guidance, the embeddings and 4 blocks
    for fast_tensor, plain_tensor in zip(fast, plain):
        torch.testing.assert_close(fast_tensor, plain_tensor, **EXACT)
    assert not uses_onednn()  # autograd: the blocks' own modules (with their checkpointing)
    # A wrapped linear (PEFT's LoRA) or a hook changes what a block computes; the oneDNN form would not see it.
    projection = backbone.vision_model.encoder.layers[1].mlp.fc2
    projection.register_forward_hook(lambda module, args, output: 2 * output)
    with torch.no_grad():
        assert not uses_onednn()
        hooked = features()
    assert not torch.allclose(hooked[0], fast[0])


@pytest.mark.parametrize("pooling", [1, 2])
@torch.no_grad()
def test_the_model_gives_the_same_logits_with_and_without_fast_paths(pooling):
    torch.manual_seed(0)
    model = randomised(CatSegForSemanticSegmentation(config())).eval()
    pixel_values = torch.randn(2, 3, 128, 128)
    text_embeds = torch.randn(5, model.catseg.embed_dim)
    fast = model(pixel_values, text_embeds=text_embeds, class_pooling_size=pooling).logits
    model.set_execution_options(fast_paths=False)
    assert not any(getattr(module, "fast_path", False) for module in model.modules())
    plain = model(pixel_values, text_embeds=text_embeds, class_pooling_size=pooling).logits
    torch.testing.assert_close(fast, plain, **EXACT)
    assert fast.abs().max() > 0.1  # the comparison is not between zeros


def test_chunk_size_defaults_to_the_device_and_to_one_call_when_compiling(monkeypatch):
    settings = CatSegSpatialAggregation(config())
    assert settings.cost_maps_per_chunk(torch.device("cpu")) == 8
    assert settings.cost_maps_per_chunk(torch.device("cuda")) == 256
    settings.cost_map_chunk_size = 5
    assert settings.cost_maps_per_chunk(torch.device("cuda")) == 5
    calls = []

    def double(chunk):
        calls.append(chunk.shape[1])
        return 2 * chunk

    tensor = torch.randn(1, 12, 3)
    torch.testing.assert_close(chunked(double, tensor, 1, settings, maps_per_slice=1), 2 * tensor)
    assert calls == [5, 5, 2]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    calls.clear()
    chunked(double, tensor, 1, settings, maps_per_slice=1)
    assert calls == [12]


def test_cpu_inference_spreads_the_chunks_over_single_threaded_workers_and_changes_no_thread_count():
    settings = CatSegSpatialAggregation(config())
    settings.cost_map_chunk_size = 2
    seen, started_meanwhile = [], []

    def record(chunk):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))
        # A thread started while the workers run (a server's new request) begins with the process's count.
        newcomer = threading.Thread(target=lambda: started_meanwhile.append(torch.get_num_threads()))
        newcomer.start()
        newcomer.join()
        time.sleep(0.05)  # long enough for the second worker to take a chunk
        return chunk * 3

    tensor = torch.arange(10.0).view(1, 10, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        single_threaded_workers(2)  # the pool is made once per process; its making is not what is tested
        with torch.inference_mode():
            result = chunked(record, tensor, 1, settings, maps_per_slice=1)
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(result, 3 * tensor)  # in order
        assert len(seen) == 5 and len({ident for ident, _, _ in seen}) == 2
        assert threading.get_ident() not in {ident for ident, _, _ in seen}
        assert all(count == 1 and inference for _, count, inference in seen)
        assert started_meanwhile == [2] * 5
        # Under autograd the chunks run in the calling thread, with its threads.
        seen.clear()
        chunked(record, tensor.requires_grad_(), 1, settings, maps_per_slice=1)
        assert {ident for ident, _, _ in seen} == {threading.get_ident()} and {n for _, n, _ in seen} == {2}
    finally:
        torch.set_num_threads(threads)


def test_an_error_in_a_chunk_reaches_the_caller_and_no_thread_count_changes():
    def fail(chunk):
        raise ValueError("chunk failed")

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="chunk failed"):
            map_chunks_in_threads(fail, torch.zeros(4).split(1), 0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
