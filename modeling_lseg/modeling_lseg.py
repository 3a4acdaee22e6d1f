"""PyTorch LSeg: language-driven semantic segmentation (Li et al., ICLR 2022).

The data flow, top-down in this file: a DPT image encoder (transformers' ViT, reassemble and fusion neck) ->
`pixel_embeddings` (a 1x1 convolution into the CLIP text space, L2-normalised per pixel) -> `word_pixel_correlation`
with the L2-normalised CLIP text embeddings of the labels, divided by a fixed temperature -> optional
`spatial_regularization` blocks -> bilinear upsampling to the input resolution.

Several steps run in a faster form beside their plain one, each tested equal to it (to float summation order):
`dpt_neck_channels_last` for transformers' `DPTNeck`; in inference (no autograd), `vit_encoder_onednn` for the ViT
blocks (oneDNN linears with their GELU or residual addition fused, `onednn_linear`) and
`pixel_projection_before_upsampling` for the neck's fusion stage and the pixel projection (each 1x1 convolution moved
before the x2 upsampling that precedes it, the last two folded into one); and, outside `torch.compile`,
`scaled_correlation_in_row_blocks` for the scaled product of the correlation. Under `torch.compile` the model is one
graph for any number of labels (tests/modeling/test_compile.py), with plain linears in place of oneDNN's.
"""

from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, CLIPModel, CLIPTextModelWithProjection, DPTModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.dpt.modeling_dpt import DPTNeck
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import (
    maybe_install_capturing_hooks,
    resolve_hidden_states_indices,
    selected_hidden_states,
)

from .configuration_lseg import LSegConfig

# Inputs are padded at the bottom and right with black, the value of a 0 pixel after LSeg's (x / 255 - 0.5) / 0.5
# normalisation; the original training pipeline and evaluator pad crops the same way.
PADDING_VALUE = -1.0


@dataclass
class LSegModelOutput(ModelOutput):
    r"""
    Output of [`LSegModel`]: pixel and label embeddings and their correlation, at the pixel-embedding resolution.

    `(height, width)` is the input size; the embeddings have `(ceil(height / 2), ceil(width / 2))` pixels.

    Args:
        correlation (`torch.FloatTensor` of shape `(batch_size, num_labels, ceil(height / 2), ceil(width / 2))`):
            Word-pixel correlation: cosine similarity between every pixel embedding and every label embedding,
            divided by `config.correlation_temperature`: the logits before spatial regularisation and upsampling.
        pixel_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim, ceil(height / 2), ceil(width / 2))`):
            L2-normalised pixel embeddings in the CLIP text space.
        text_embeds (`torch.FloatTensor` of shape `(num_labels, projection_dim)` or `(batch_size, num_labels,
        projection_dim)`):
            L2-normalised label embeddings.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
            The ViT embeddings and the output of every ViT block, each `(batch_size, 1 + num_patches, hidden_size)`,
            computed on the input padded to a multiple of `config.input_size_multiple`. With a list of indices,
            the entries not selected are `None`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The attention weights of every ViT block, each `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`.
    """

    correlation: torch.FloatTensor | None = None
    pixel_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LSegSemanticSegmenterOutput(ModelOutput):
    r"""
    Output of [`LSegForSemanticSegmentation`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Cross-entropy over the labels, averaged over the pixels whose label is not `config.ignore_index`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels, height, width)`):
            Per-label scores at the input resolution; `logits.argmax(1)` is the segmentation.
        pixel_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim, ceil(height / 2), ceil(width / 2))`,
        *optional*, returned with `output_hidden_states`):
            L2-normalised pixel embeddings in the CLIP text space.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
            The ViT hidden states, as in [`LSegModelOutput`].
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The attention weights of every ViT block, as in [`LSegModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pixel_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def dpt_neck_channels_last(
    neck: DPTNeck, hidden_states: list[torch.Tensor], patch_height: int, patch_width: int
) -> torch.Tensor:
    """`neck(hidden_states, patch_height, patch_width)[-1]`, the finest fused map, computed in channels-last layout.

    The same modules and weights as transformers' `DPTNeck`, to float summation order, in the layout the ViT tokens
    already have: `(batch, 1 + patches, hidden)` is `(batch, height, width, channels)` in memory once the readout
    token is dropped. `DPTNeck` turns it into contiguous NCHW and back around the readout projection, and its 1x1,
    transposed and 3x3 convolutions, bilinear upsamplings and per-pixel ops then stride across channels; here every
    one of them reads and writes rows of channels (oneDNN's and PyTorch's channels-last kernels), and the readout
    `Linear(2 * hidden, hidden)` of `[patch ; cls]` is split into the patch half plus the cls half computed once per
    image, which halves its cost. Returns the plain neck's last map, `(batch, fusion_hidden_size, 8 * patch_height,
    8 * patch_width)` with LSeg's reassemble factors, in channels-last memory format.
    """
    stage = neck.reassemble_stage
    readout_type = stage.config.readout_type
    features = []
    for index, hidden_state in enumerate(hidden_states):
        cls_token, patches = hidden_state[:, :1], hidden_state[:, 1:]
        if readout_type == "project":
            project, activation = stage.readout_projects[index]
            patch_weight, cls_weight = project.weight.split(patches.shape[-1], dim=1)
            patches = activation(F.linear(patches, patch_weight) + F.linear(cls_token, cls_weight, project.bias))
        elif readout_type == "add":
            patches = patches + cls_token
        batch, _, channels = patches.shape
        image = patches.reshape(batch, patch_height, patch_width, channels).permute(0, 3, 1, 2)
        features.append(neck.convs[index](stage.layers[index](image)))
    return neck.fusion_stage(features)[-1]


# oneDNN's fp32 linear with an optional fused post-op, the op inductor emits on CPU; absent from builds without it.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
# Read once: dynamo refuses to trace `torch.backends.mkldnn.is_available`.
_ONEDNN_AVAILABLE = _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()
_ONEDNN_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
# id(weight) -> (weak reference to the weight, its version and storage when packed, the packed copy); an entry goes
# when its weight is freed. Kept apart from the weights, so that pickling or copying a model never meets a packed
# (opaque) tensor.
_PACKED_WEIGHTS: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}


def packed_onednn_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` `(out_features, in_features)` in oneDNN's own blocked layout for inputs of about `rows` rows, made
    once and reused until the weight changes (in place, as an optimiser step or `load_state_dict` does, or
    replaced).

    Given a plain weight, oneDNN's linear first reorders it into that layout at every call: at the ViT-L's shapes that
    reorder cost 20-25% of the product's time on one thread of the 2-core AMD EPYC VM of issue 23. The packed copy
    holds as much memory as the weight (1.2 GB for LSeg's ViT-L). The products are bitwise those of the plain
    weight.
    """
    entry = _PACKED_WEIGHTS.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1:3] == (weight._version, weight.data_ptr()):
        return entry[3]
    packed = _ONEDNN_REORDER(weight.contiguous(), rows)
    key = id(weight)
    reference = weakref.ref(weight, lambda _, key=key: _PACKED_WEIGHTS.pop(key, None))
    _PACKED_WEIGHTS[key] = (reference, weight._version, weight.data_ptr(), packed)
    return packed


def release_packed_weights(module: nn.Module) -> None:
    """Frees the packed copies ([`packed_onednn_weight`]) of `module`'s parameters."""
    for parameter in module.parameters():
        _PACKED_WEIGHTS.pop(id(parameter), None)


def onednn_linear(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    pack: bool = False,
) -> torch.Tensor:
    """`F.linear(hidden_states, weight, bias)`, then exact GELU (`activation="gelu"`) or `+ residual`.

    In CPU fp32 inference this is one call of oneDNN's linear with the GELU or the addition as a post-op. PyTorch's
    `F.linear` goes to MKL's `sgemm`, which on AMD CPUs runs its AVX2 code even where the CPU has AVX-512, and
    first copies the bias into every output row. On the 2-core AMD EPYC (Zen 5) VM of issue 23, at the ViT-L's
    shapes (577 tokens, 1024 -> 1024/4096 -> 1024), oneDNN's AVX-512 kernel ran at 270-400 GFLOP/s against MKL's
    195-225. Under autograd (the oneDNN op has no backward), on other devices and dtypes, with oneDNN switched off
    (`torch.backends.mkldnn.enabled = False`) and while tracing for `torch.compile` / `torch.export` it is the plain
    composition. `residual` must have the output's shape. With `pack`, oneDNN gets the weight packed once
    ([`packed_onednn_weight`]).
    """
    # The compile check comes first: inductor lowers this op only for the weights it packs itself (freezing).
    if (
        not torch.compiler.is_compiling()
        and _ONEDNN_AVAILABLE
        and hidden_states.device.type == "cpu"
        and hidden_states.dtype == weight.dtype == torch.float32
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad))
    ):
        if pack and _ONEDNN_REORDER is not None:
            weight = packed_onednn_weight(weight, hidden_states.numel() // hidden_states.shape[-1])
        else:
            # A strided weight (a slice of a larger one) sends oneDNN to a reference kernel hundreds of times slower.
            weight = weight.contiguous()
        if residual is not None:
            return _ONEDNN_LINEAR.binary(hidden_states, residual, weight, bias, "add")
        if activation == "gelu":
            return _ONEDNN_LINEAR(hidden_states, weight, bias, "gelu", [], "none")
        return _ONEDNN_LINEAR(hidden_states, weight, bias, "none", [], "")
    hidden_states = F.linear(hidden_states, weight, bias)
    if residual is not None:
        return hidden_states + residual
    return F.gelu(hidden_states) if activation == "gelu" else hidden_states


def plain_vit_layer(layer: nn.Module) -> bool:
    """Whether [`vit_encoder_onednn`], which reads the layer's weights directly, computes what transformers' `layer`
    computes: every linear a plain `nn.Linear` (not PEFT's LoRA wrapper, not a quantised layer) and no forward hooks
    in it (but transformers' output capturing, which only records)."""
    attention = layer.attention.attention
    linears = (
        attention.query,
        attention.key,
        attention.value,
        layer.attention.output.dense,
        layer.intermediate.dense,
        layer.output.dense,
    )
    return all(type(linear) is nn.Linear for linear in linears) and not any(
        _changing_hooks(module) for module in layer.modules()
    )


def _changing_hooks(module: nn.Module) -> bool:
    """Whether `module` has forward hooks other than transformers' output capturing, which only records outputs."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(getattr(hook, "__module__", None) != "transformers.utils.output_capturing" for hook in hooks)


def vit_encoder_onednn(encoder: nn.Module, hidden_states: torch.Tensor, pack: bool = False) -> list[torch.Tensor]:
    """The output of every block of transformers' `DPTViTEncoder` `encoder` from its input `hidden_states`.

    The same blocks and weights, to float summation order, with each linear one [`onednn_linear`] call: the
    attention output projection and the second MLP layer with their residual addition fused, the first MLP layer
    with its GELU (other activations run after it), and SDPA in between. For inference: it bypasses the blocks'
    modules, so it has neither their gradient checkpointing nor their attention outputs. With `pack`, the weights
    are packed once for oneDNN ([`packed_onednn_weight`]).
    """
    # transformers' "gelu" is the exact (erf) GELU, the one oneDNN fuses.
    fuse_gelu = encoder.config.hidden_act == "gelu"
    outputs = []
    for layer in encoder.layer:
        attention = layer.attention.attention
        normed = layer.layernorm_before(hidden_states)
        batch, tokens, _ = normed.shape
        heads = (batch, tokens, attention.num_attention_heads, attention.attention_head_size)
        query, key, value = (
            onednn_linear(normed, projection.weight, projection.bias, pack=pack).view(heads).transpose(1, 2)
            for projection in (attention.query, attention.key, attention.value)
        )
        context = F.scaled_dot_product_attention(query, key, value, scale=attention.scaling)
        context = context.transpose(1, 2).reshape(batch, tokens, -1)
        dense = layer.attention.output.dense
        hidden_states = onednn_linear(context, dense.weight, dense.bias, residual=hidden_states, pack=pack)
        intermediate = layer.intermediate
        normed = layer.layernorm_after(hidden_states)
        if fuse_gelu:
            mlp = onednn_linear(normed, intermediate.dense.weight, intermediate.dense.bias, "gelu", pack=pack)
        else:
            mlp = onednn_linear(normed, intermediate.dense.weight, intermediate.dense.bias, pack=pack)
            mlp = intermediate.intermediate_act_fn(mlp)
        output = layer.output.dense
        hidden_states = onednn_linear(mlp, output.weight, output.bias, residual=hidden_states, pack=pack)
        outputs.append(hidden_states)
    return outputs


def pixel_projection_before_upsampling(
    neck: DPTNeck, projection: nn.Conv2d, hidden_states: list[torch.Tensor], patch_height: int, patch_width: int
) -> torch.Tensor:
    """`projection(dpt_neck_channels_last(neck, hidden_states, patch_height, patch_width))`, for inference: LSeg's
    pixel embeddings before their normalisation, `(batch, projection_dim, 8 * patch_height, 8 * patch_width)`.

    The same modules and weights, to float summation order, in fewer operations:
    - Each fusion layer ends with a x2 bilinear upsampling and then a 1x1 convolution. Both are linear maps and the
      upsampling's weights at every pixel sum to one, so the convolution runs first, on a quarter of the pixels.
    - The last fusion layer's 1x1 convolution and `projection` (LSeg's 1x1 convolution into the text space) follow
      each other with nothing in between, so they are folded into one convolution (weights multiplied once per
      call): at 384 one 256 -> 512 convolution at 96x96 replaces a 256 -> 256 and a 256 -> 512 one at 192x192.
    - The readout projection's patch half is one [`onednn_linear`] call, with the cls half added as its post-op.
    """
    stage = neck.reassemble_stage
    features = []
    for index, hidden_state in enumerate(hidden_states):
        cls_token, patches = hidden_state[:, :1], hidden_state[:, 1:]
        if stage.config.readout_type == "project":
            project, activation = stage.readout_projects[index]
            patch_weight, cls_weight = project.weight.split(patches.shape[-1], dim=1)
            cls_term = F.linear(cls_token, cls_weight, project.bias).expand_as(patches).contiguous()
            patches = activation(onednn_linear(patches, patch_weight, None, residual=cls_term))
        elif stage.config.readout_type == "add":
            patches = patches + cls_token
        batch, _, channels = patches.shape
        image = patches.reshape(batch, patch_height, patch_width, channels).permute(0, 3, 1, 2)
        features.append(neck.convs[index](stage.layers[index](image)))
    layers = neck.fusion_stage.layers
    fused = None
    for index, (feature, layer) in enumerate(zip(features[::-1], layers)):
        if fused is None:
            hidden_state = feature
        else:
            if fused.shape != feature.shape:
                feature = F.interpolate(feature, size=fused.shape[2:], mode="bilinear", align_corners=False)
            hidden_state = fused + layer.residual_layer1(feature)
        hidden_state = layer.residual_layer2(hidden_state)
        weight, bias = layer.projection.weight, layer.projection.bias
        if index == len(layers) - 1:
            outer = projection.weight.flatten(1)
            weight = (outer @ weight.flatten(1)).view(outer.shape[0], -1, 1, 1)
            bias = outer @ bias + projection.bias
        hidden_state = F.conv2d(hidden_state, weight, bias)
        fused = F.interpolate(hidden_state, scale_factor=2, mode="bilinear", align_corners=layer.align_corners)
    return fused


class LSegPixelEmbeddings(nn.Module):
    """Dense image embeddings in the text space: a 1x1 convolution of the finest fused DPT map, L2-normalised."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.dpt_config.fusion_hidden_size, config.clip_config.projection_dim, 1)

    def forward(self, fused_features: torch.Tensor) -> torch.Tensor:
        """`(batch, fusion_hidden_size, h, w)` -> `(batch, projection_dim, h, w)` unit vectors."""
        embeddings = self.projection(fused_features)
        # Without autograd the division goes in place: this is the model's largest map, and a second one costs
        # more in fresh memory (page faults) than the division itself. A compiled graph plans its own buffers, and
        # dynamo cannot trace `out=` into a tensor it did not allocate.
        in_place = not embeddings.requires_grad and not torch.compiler.is_compiling()
        return F.normalize(embeddings, dim=1, out=embeddings if in_place else None)


def scaled_correlation_in_row_blocks(
    pixels: torch.Tensor, text_embeds: torch.Tensor, scale: float, block_rows: int = 2048
) -> torch.Tensor:
    """`(scale * pixels) @ text_embeds.transpose(-1, -2)`, the word-pixel correlation, for inference.

    `pixels` `(batch, rows, dim)`; `text_embeds` `(num_labels, dim)` or `(batch, num_labels, dim)`; returns
    `(batch, rows, num_labels)`. The same scaled products, to float summation order, but each block of rows is
    scaled into one small buffer that is reused while it is in cache and multiplied straight into its rows of the
    result, so the scaled copy of all the pixels (75 MB for a 384 image, the model's largest temporary) is never
    allocated: its fresh memory costs more than the products. Writes into preallocated tensors, so no autograd.
    """
    batch, rows, dim = pixels.shape
    labels = text_embeds.transpose(-1, -2)
    correlation = pixels.new_empty(batch, rows, labels.shape[-1])
    buffer = pixels.new_empty(min(block_rows, rows), dim)
    for index in range(batch):
        matrix = labels[index] if labels.ndim == 3 else labels
        for start in range(0, rows, block_rows):
            block = pixels[index, start : start + block_rows]
            scaled = torch.mul(block, scale, out=buffer[: block.shape[0]])
            torch.mm(scaled, matrix, out=correlation[index, start : start + block.shape[0]])
    return correlation


class LSegWordPixelCorrelation(nn.Module):
    """Cosine similarity of every pixel embedding with every label embedding, divided by a fixed temperature."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        self.logit_scale = 1.0 / config.correlation_temperature

    def forward(self, pixel_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pixel_embeds: `(batch, dim, h, w)` unit vectors.
            text_embeds: `(num_labels, dim)` shared by the batch, or `(batch, num_labels, dim)`; unit vectors.
        Returns:
            `(batch, num_labels, h, w)`.
        """
        batch, dim, height, width = pixel_embeds.shape
        pixels = pixel_embeds.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
        if pixels.requires_grad or text_embeds.requires_grad or torch.compiler.is_compiling():
            # Scaling the pixels before the product, in this layout, keeps the original's rounding exactly.
            correlation = (self.logit_scale * pixels) @ text_embeds.transpose(-1, -2)
        else:
            correlation = scaled_correlation_in_row_blocks(pixels, text_embeds, self.logit_scale)
        return correlation.view(batch, height, width, -1).permute(0, 3, 1, 2)


class LSegSpatialRegularizationBlock(nn.Module):
    """The optional spatial regularisation of the correlation map (`config.arch_option` 1 or 2).

    One 3x3 convolution filters every label map alike; the "bottleneck" variant (arch_option 1) adds the per-pixel
    maximum over the labels of its input. The block is applied `config.block_depth` times with the same weights,
    with `config.activation` between applications but not after the last.
    """

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        # The block's own 1->1 channel 3x3 kernel, applied to each label map as a separate image.
        self.weight = nn.Parameter(torch.empty(1, 1, 3, 3))
        self.bias = nn.Parameter(torch.empty(1))
        self.add_label_maximum = config.arch_option == 1
        self.activation = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(), "tanh": nn.Tanh()}[config.activation]
        self.depth = max(config.block_depth, 1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """`(batch, num_labels, h, w)` -> `(batch, num_labels, h, w)`."""
        batch, num_labels, height, width = logits.shape
        for step in range(self.depth):
            filtered = F.conv2d(
                logits.reshape(batch * num_labels, 1, height, width), self.weight, self.bias, padding=1
            )
            filtered = filtered.view_as(logits)
            if self.add_label_maximum:
                filtered = filtered + logits.amax(dim=1, keepdim=True)
            logits = self.activation(filtered) if step < self.depth - 1 else filtered
        return logits


class LSegPreTrainedModel(PreTrainedModel):
    config_class = LSegConfig
    base_model_prefix = "lseg"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["DPTViTLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # The loss is a mean over the labelled pixels, so the Trainer must not rescale it by its own token count.
    accepts_loss_kwargs = False
    # Folders saved before the unused final ViT LayerNorm was dropped still hold it.
    _keys_to_ignore_on_load_unexpected = [r"dpt\.layernorm\."]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LSegSpatialRegularizationBlock):
            # A new block starts as the identity, so it passes the correlation on instead of scaling it down.
            init.dirac_(module.weight)
            init.zeros_(module.bias)

    def set_execution_options(self, fast_paths: bool = True, pack_weights: bool = True) -> None:
        """How the model runs in inference; neither option changes the result beyond float rounding, and neither is
        saved.

        Args:
            fast_paths: in inference (no autograd), run the ViT through [`vit_encoder_onednn`] and the neck and
                pixel projection through [`pixel_projection_before_upsampling`], exact reformulations tested equal
                to transformers' modules. `False` runs the modules themselves.
            pack_weights: with the fast paths on CPU in fp32, keep the ViT's weights packed in oneDNN's layout
                ([`packed_onednn_weight`]): faster, at as much memory again as the ViT (1.2 GB for ViT-L). `False`
                also frees the packed copies made so far.
        """
        for name, value in (("fast_paths", fast_paths), ("pack_weights", pack_weights)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False.")
        if not pack_weights:
            release_packed_weights(self)
        for module in self.modules():
            if isinstance(module, LSegModel):
                module.fast_path = fast_paths
                module.pack_onednn_weights = pack_weights

    def parameter_groups(self) -> dict[str, list[str]]:
        """The model's parameters by part, for per-part learning rates: `{"image_encoder": [...],
        "reassemble_stage": [...], "decoder": [...], "text_encoder": [...]}` (names as in `named_parameters()`). The
        image encoder is the ViT; with the DPT's reassemble stage it is what the original calls "pretrained", and the
        decoder is everything it builds from scratch (its recipe trains it at 10x); the text encoder is the frozen
        CLIP text tower."""
        groups = {"image_encoder": [], "reassemble_stage": [], "decoder": [], "text_encoder": []}
        for name, _ in self.named_parameters():
            path = f".{name}"
            if ".text_encoder." in path:
                groups["text_encoder"].append(name)
            elif ".dpt." in path:
                groups["image_encoder"].append(name)
            elif ".reassemble_stage." in path:
                groups["reassemble_stage"].append(name)
            else:
                groups["decoder"].append(name)
        return groups


class LSegModel(LSegPreTrainedModel):
    """The DPT image encoder, the CLIP text encoder and their word-pixel correlation.

    The CLIP text encoder stays frozen, as in the original training, which never gave it to the optimiser: its
    parameters have `requires_grad=False` and it runs without autograd, so DDP needs no `find_unused_parameters`.

    In CPU fp32 inference the ViT's weights are packed for oneDNN on first use and the packed copies kept (as much
    memory again as the ViT: 1.2 GB for ViT-L; see [`packed_onednn_weight`]).
    `set_execution_options(pack_weights=False)` trades that memory for about 20% more time at 384.
    """

    # Runtime attributes, set by [`LSegPreTrainedModel.set_execution_options`] and never saved.
    fast_path: bool = True
    pack_onednn_weights: bool = True

    def __init__(self, config: LSegConfig) -> None:
        super().__init__(config)
        self.dpt = DPTModel._from_config(config.dpt_config, add_pooling_layer=False)
        # LSeg reads the ViT blocks' outputs and discards the final LayerNorm's, so the model does not have it.
        self.dpt.layernorm = nn.Identity()
        self.neck = DPTNeck(config.dpt_config)
        self.pixel_embeddings = LSegPixelEmbeddings(config)
        self.text_encoder = CLIPTextModelWithProjection._from_config(config.clip_config.text_config)
        self.word_pixel_correlation = LSegWordPixelCorrelation(config)
        self.post_init()
        self.text_encoder.requires_grad_(False)
        # The deepest fusion stage has no coarser input to merge, so its first residual unit never runs; its weights
        # stay only because the official checkpoints hold them.
        self.neck.fusion_stage.layers[0].residual_layer1.requires_grad_(False)
        # The forward always asks the ViT for its hidden states, and transformers installs the hooks that record
        # them on first use, under a lock that `torch.compile` cannot trace: installed here, the forward is one graph.
        maybe_install_capturing_hooks(self.dpt)

    def get_input_embeddings(self) -> nn.Module:
        """The ViT's patch embedding, as for transformers' DPT and ViT."""
        return self.dpt.get_input_embeddings()

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """The label embeddings of tokenised labels `(num_labels, length)`, as CLIP's `get_text_features` returns them.

        `pooler_output` holds the L2-normalised label embeddings `(num_labels, projection_dim)`; `last_hidden_state`,
        `hidden_states` (with `output_hidden_states`) and `attentions` (with `output_attentions`) are the CLIP text
        encoder's. LSeg encodes the raw label strings, without a prompt template. The CLIP tokenizer's output works
        as is: the feature is read at the first end-of-text token, and causal attention keeps the padding after it
        out.
        """
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be (num_labels, sequence_length), one vocabulary shared by the batch; got shape "
                f"{tuple(input_ids.shape)}. For a vocabulary per image, stack get_text_features() of each into "
                f"text_embeds of shape (batch_size, num_labels, projection_dim)."
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
            )
        # The flags of this config govern the outputs; the nested text config's own are not the user's.
        kwargs.setdefault("output_hidden_states", self.config.output_hidden_states)
        kwargs.setdefault("output_attentions", self.config.output_attentions)
        with torch.no_grad():
            outputs = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=F.normalize(outputs.text_embeds, dim=-1),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LSegModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                RGB images normalised as `(x / 255 - 0.5) / 0.5`. Any size works; sides that are not a multiple of
                `config.input_size_multiple` (32) are padded with black at the bottom and right, and the outputs
                are cropped back (the original implementation fails on such sizes).
            input_ids (`torch.LongTensor` of shape `(num_labels, sequence_length)`, *optional*):
                The tokenised labels (raw names, no template), one vocabulary shared by the whole batch.
            attention_mask (`torch.Tensor` of shape `(num_labels, sequence_length)`, *optional*):
                Mask of `input_ids`.
            text_embeds (`torch.FloatTensor` of shape `(num_labels, projection_dim)` or `(batch_size, num_labels,
            projection_dim)`, *optional*):
                Precomputed label embeddings (from [`~LSegModel.get_text_features`]) instead of `input_ids`, so a
                vocabulary is encoded once; a batched tensor gives every image its own vocabulary. They are
                L2-normalised here.
            output_hidden_states (`bool` or `list[int]`, *optional*):
                Also return the ViT hidden states: all of them, or those at the given indices.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._check_pixel_values(pixel_values)
        text_embeds = self._label_embeddings(input_ids, attention_mask, text_embeds, batch_size=pixel_values.shape[0])

        # Images usually arrive in float32 whatever the model's dtype.
        pixel_values = pixel_values.to(self.dpt.dtype)
        height, width = pixel_values.shape[-2:]
        multiple = self.config.input_size_multiple
        pad_height, pad_width = -height % multiple, -width % multiple
        if pad_height or pad_width:
            pixel_values = F.pad(pixel_values, (0, pad_width, 0, pad_height), value=PADDING_VALUE)
        dpt_config = self.config.dpt_config
        patch_height = pixel_values.shape[-2] // dpt_config.patch_size
        patch_width = pixel_values.shape[-1] // dpt_config.patch_size
        if self._inference_fast_paths(kwargs):
            # The same ViT, neck and projection in fewer and faster operations (equality-tested against the plain
            # forms below).
            embeddings = self.dpt.embeddings(pixel_values).last_hidden_states
            vit_outputs = vit_encoder_onednn(self.dpt.encoder, embeddings, pack=self.pack_onednn_weights)
            hidden_states = (embeddings, *vit_outputs)
            attentions = None
            hooked = [hidden_states[index + 1] for index in dpt_config.backbone_out_indices]
            pixel_embeds = pixel_projection_before_upsampling(
                self.neck, self.pixel_embeddings.projection, hooked, patch_height, patch_width
            )
            # In place, as in `LSegPixelEmbeddings`, except in a compiled graph.
            in_place = not torch.compiler.is_compiling()
            pixel_embeds = F.normalize(pixel_embeds, dim=1, out=pixel_embeds if in_place else None)
        else:
            # The hooks need the hidden states, whatever the caller asked for.
            encoder_outputs = self.dpt(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
            hidden_states, attentions = encoder_outputs.hidden_states, encoder_outputs.attentions
            hooked = [hidden_states[index + 1] for index in dpt_config.backbone_out_indices]
            # transformers' DPTNeck, computed in the ViT tokens' own channels-last layout (equality-tested against
            # it).
            fused = dpt_neck_channels_last(self.neck, hooked, patch_height, patch_width)
            pixel_embeds = self.pixel_embeddings(fused)
        stride = pixel_values.shape[-2] // pixel_embeds.shape[-2]
        pixel_embeds = pixel_embeds[..., : -(-height // stride), : -(-width // stride)]

        correlation = self.word_pixel_correlation(pixel_embeds, text_embeds.to(pixel_embeds.dtype))
        if not output_hidden_states:
            hidden_states = None
        elif (selected := selected_hidden_states(output_hidden_states)) is not None:
            selected = resolve_hidden_states_indices(self, selected, num_hidden_states=len(hidden_states))
            hidden_states = tuple(state if index in selected else None for index, state in enumerate(hidden_states))
        return LSegModelOutput(
            correlation=correlation,
            pixel_embeds=pixel_embeds,
            text_embeds=text_embeds,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def _apply(self, fn, recurse: bool = True):
        # `.to()`, `.cuda()`, `.half()` and friends swap the parameters' data under the same objects: a packed copy
        # of the old data would otherwise be kept (on CPU) until the next CPU inference replaced it.
        release_packed_weights(self)
        return super()._apply(fn, recurse)

    def _inference_fast_paths(self, kwargs: dict) -> bool:
        """Whether [`vit_encoder_onednn`] and [`pixel_projection_before_upsampling`] replace the plain ViT and neck:
        with `fast_path`, in inference (no autograd), when no attention weights are asked for and the ViT's linears
        are plain ones without hooks ([`plain_vit_layer`]). Their linears take oneDNN only where [`onednn_linear`]
        says."""
        return (
            self.fast_path
            and not torch.is_grad_enabled()
            and not kwargs.get("output_attentions")
            and not self.config.output_attentions
            and not self.config.dpt_config.output_attentions
            # Last: the only check that walks the modules.
            and all(plain_vit_layer(layer) for layer in self.dpt.encoder.layer)
        )

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        channels = self.config.dpt_config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must be (batch_size, {channels}, height, width) images normalised as "
                f"(x / 255 - 0.5) / 0.5; got shape {tuple(pixel_values.shape)}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point, normalised as (x / 255 - 0.5) / 0.5; got {pixel_values.dtype}."
            )

    def _label_embeddings(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        text_embeds: torch.FloatTensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """The normalised label embeddings from whichever of `input_ids` and `text_embeds` was given."""
        if (input_ids is None) == (text_embeds is None):
            raise ValueError(
                "Give the label vocabulary exactly once: either input_ids (num_labels, sequence_length) from the CLIP "
                "tokenizer, or text_embeds (num_labels, projection_dim) from get_text_features()."
            )
        if text_embeds is None:
            text_embeds = self.get_text_features(input_ids, attention_mask).pooler_output
        else:
            dim = self.config.clip_config.projection_dim
            batched = text_embeds.ndim == 3 and text_embeds.shape[0] == batch_size
            if not (text_embeds.ndim == 2 or batched) or text_embeds.shape[-1] != dim:
                raise ValueError(
                    f"text_embeds must be (num_labels, {dim}) or (batch_size={batch_size}, num_labels, {dim}); got "
                    f"shape {tuple(text_embeds.shape)}. Compute them with get_text_features() of this model."
                )
            text_embeds = F.normalize(text_embeds, dim=-1)
        if text_embeds.shape[-2] == 0:
            raise ValueError("The label vocabulary is empty: give at least one label.")
        return text_embeds


class LSegForSemanticSegmentation(LSegPreTrainedModel):
    """LSeg with its spatial regularisation and upsampling: per-label logits at the input resolution for any labels.

    Zero-shot and FSS-style binary segmentation use the same weights with the labels `["others", name]`:
    `logits.argmax(1)` is then the mask of `name`. The official zero-shot network never applies the spatial
    regularisation block; `config.zero_shot=True` does the same here.
    """

    def __init__(self, config: LSegConfig) -> None:
        super().__init__(config)
        self.lseg = LSegModel(config)
        self.spatial_regularization = LSegSpatialRegularizationBlock(config) if config.arch_option else None
        self.post_init()

    @classmethod
    def from_pretrained_parts(
        cls,
        image_encoder: PreTrainedModel | str | os.PathLike,
        text_encoder: CLIPModel | str | os.PathLike,
        config: LSegConfig | None = None,
        **config_kwargs,
    ) -> LSegForSemanticSegmentation:
        """A new LSeg, ready to train, whose ViT comes from a DPT or ViT checkpoint and whose text encoder from CLIP.

        `image_encoder` is a `DPTModel`, `ViTModel` (or any model with their `embeddings`/`encoder` layout), a hub id
        such as `"Intel/dpt-large"` or `"google/vit-large-patch16-384"`, or a local folder; only its ViT is used
        (LSeg's neck, with BatchNorm in the fusion units, starts fresh, as in the original training).
        `text_encoder` is a `CLIPModel`, hub id or folder, e.g. `"openai/clip-vit-base-patch32"`.

        Without `config`, the ViT and CLIP dimensions are read from the checkpoints, the hooks sit at the ends of the
        four quarters of the ViT (blocks 5/11/17/23 of 24) and the rest is the demo model's; `config_kwargs`
        override [`LSegConfig`] fields. With `config`, the checkpoints must match it.
        """
        if not isinstance(image_encoder, PreTrainedModel):
            image_encoder = AutoModel.from_pretrained(image_encoder)
        # A task model (DPT for depth, ViT for classification) holds the ViT as its base model.
        image_encoder = image_encoder.base_model
        if not isinstance(text_encoder, CLIPModel):
            text_encoder = CLIPModel.from_pretrained(text_encoder)
        if config is None:
            vit = image_encoder.config
            depth = vit.num_hidden_layers
            vit_fields = (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
            )  # fmt: skip
            dpt_config = {
                **{field: getattr(vit, field) for field in vit_fields},
                "backbone_out_indices": [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1],
            }
            config = LSegConfig(dpt_config=dpt_config, clip_config=text_encoder.config.to_dict(), **config_kwargs)
        model = cls(config)
        vit_state = {}
        for name, tensor in image_encoder.state_dict().items():
            name = next((pattern.sub(new, name) for pattern, new in _VIT_TO_DPT_KEYS if pattern.match(name)), name)
            if name.split(".", 1)[0] in ("embeddings", "encoder"):
                vit_state[name] = tensor
        load_state_dict_strictly(model.lseg.dpt, vit_state, "The image_encoder checkpoint")
        clip_state = {
            name: tensor
            for name, tensor in text_encoder.state_dict().items()
            if name.split(".", 1)[0] in ("text_model", "text_projection")
        }
        load_state_dict_strictly(model.lseg.text_encoder, clip_state, "The text_encoder checkpoint")
        return model

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """The label embeddings in `pooler_output`, L2-normalised; see [`LSegModel.get_text_features`]."""
        return self.lseg.get_text_features(input_ids, attention_mask, **kwargs)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LSegSemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                RGB images normalised as `(x / 255 - 0.5) / 0.5`, any size (see [`LSegModel.forward`]).
            input_ids (`torch.LongTensor` of shape `(num_labels, sequence_length)`, *optional*):
                The tokenised labels (raw names, no template), one vocabulary shared by the whole batch.
            attention_mask (`torch.Tensor` of shape `(num_labels, sequence_length)`, *optional*):
                Mask of `input_ids`.
            text_embeds (`torch.FloatTensor` of shape `(num_labels, projection_dim)` or `(batch_size, num_labels,
            projection_dim)`, *optional*):
                Precomputed label embeddings instead of `input_ids`, so a vocabulary is encoded once.
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Indices into the vocabulary, or `config.ignore_index`; gives the cross-entropy loss. Labels of
                another size are compared with bilinearly resized logits.
            output_hidden_states (`bool` or `list[int]`, *optional*):
                Also return the pixel embeddings and the ViT hidden states (all, or those at the given indices).

        Example:

        ```python
        >>> from transformers import AutoModelForSemanticSegmentation, CLIPTokenizer
        >>> model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)
        >>> tokenizer = CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")
        >>> text = tokenizer(["dog", "grass", "other"], padding=True, return_tensors="pt")
        >>> pixel_values = (image / 255 - 0.5) / 0.5  # (1, 3, height, width)
        >>> logits = model(pixel_values, **text).logits  # (1, 3, height, width)
        ```
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        outputs = self.lseg(
            pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            text_embeds=text_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = outputs.correlation
        if self.spatial_regularization is not None and not self.config.zero_shot:
            logits = self.spatial_regularization(logits)
        # For an even side this is the original's exact x2 upsampling (align_corners ignores the scale factor).
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)

        loss = None
        if labels is not None:
            self._check_labels(labels, logits)
            loss = self.loss_function(logits, labels, ignore_index=self.config.ignore_index)
        return LSegSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            pixel_embeds=outputs.pixel_embeds if output_hidden_states else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _check_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> None:
        batch, num_labels = logits.shape[:2]
        if labels.ndim != 3 or labels.shape[0] != batch or labels.is_floating_point():
            raise ValueError(
                f"labels must be integer (batch_size={batch}, height, width) label indices; got a "
                f"{labels.dtype} tensor of shape {tuple(labels.shape)}."
            )
        if torch.compiler.is_compiling():
            # The values cannot be read while tracing; an index outside the vocabulary then fails in the loss.
            return
        labelled = labels[labels != self.config.ignore_index]
        outside = labelled[(labelled < 0) | (labelled >= num_labels)]
        if outside.numel():
            raise ValueError(
                f"labels hold values {sorted(set(outside.unique().tolist()))[:10]} that are neither indices into the "
                f"{num_labels} labels of the vocabulary nor the ignore index {self.config.ignore_index}."
            )


# transformers' `ViTModel` names its blocks differently from DPT's copy of the ViT (which `DPTModel` keeps).
_VIT_TO_DPT_KEYS = [
    (re.compile(rf"layers\.(\d+)\.{vit}\."), rf"encoder.layer.\1.{dpt}.")
    for vit, dpt in [
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
        ("(layernorm_before|layernorm_after)", r"\2"),
    ]
]


def load_state_dict_strictly(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, after a comparison whose error names the missing, unexpected and misshapen keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {keys[:20]}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(f"{source} does not fit the LSeg config: " + "; ".join(problems))
    module.load_state_dict(state_dict)


__all__ = ["LSegModel", "LSegForSemanticSegmentation", "LSegPreTrainedModel"]
