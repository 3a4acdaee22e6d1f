"""The vision-language backbones of CAT-Seg: the interface between cost aggregation and its encoder, and the adapters.

CAT-Seg asks its backbone for five things, and nothing else in the model knows which backbone it runs on:

1. dense image embeddings, one per patch, in the space of the text embeddings (the cost volume's image side);
2. the patch tokens of some intermediate blocks (the upsampling decoder's guidance);
3. text embeddings of tokenised prompts (the cost volume's text side and the class aggregation's guidance);
4. which of its parameters each fine-tuning policy of the paper's Table 6 trains ([`CatSegBackbone.parameter_role`]);
5. how its text must be tokenised ([`CatSegBackbone.text_settings`]), for the processor.

An adapter is a subclass of a transformers vision-language model that implements [`CatSegBackbone`], so that the
model's own checkpoints load into it unchanged, registered for its `model_type` with [`register_backbone`]. Two ship
here: [`CatSegClipBackbone`] for every `CLIPModel` (OpenAI CLIP, OpenCLIP, MetaCLIP in the CLIP format) and
[`CatSegSiglipBackbone`] for every `SiglipModel` (SigLIP, and SigLIP 2's fixed-resolution checkpoints, which
transformers loads as `SiglipModel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedConfig, SiglipModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput


@dataclass
class CatSegBackboneOutput(ModelOutput):
    r"""
    What a backbone gives CAT-Seg for a batch of images.

    Args:
        dense_image_features (`torch.FloatTensor` of shape `(batch_size, embed_dim, grid, grid)`):
            One embedding per patch in the space of the text embeddings.
        guidance_features (`tuple(torch.FloatTensor)`, each of shape `(batch_size, vision_hidden_size, grid, grid)`):
            The patch tokens of the requested vision blocks, in the order requested.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The vision tower's hidden states when asked for (see each adapter).
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The vision blocks' attention probabilities when asked for (eager attention only).
    """

    dense_image_features: torch.FloatTensor | None = None
    guidance_features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class CatSegBackbone:
    """The interface every CAT-Seg backbone adapter implements, beside the vision-language model it subclasses.

    Class attributes:
        catseg_prefix: the attribute of [`CatSegModel`] that holds the backbone, hence the prefix of its weights
            in CAT-Seg checkpoints (`"clip"` keeps every checkpoint saved before backbones were pluggable loadable).
        supports_visual_prompts: whether deep visual prompt tokens (`clip_finetune="prompt"`) can ride along.

    Runtime attribute (set through [`CatSegPreTrainedModel.set_execution_options`], never saved):
        fast_path: whether an adapter may run its tower through an exact faster form where it has one.
    """

    catseg_prefix: str
    supports_visual_prompts: bool = False
    fast_path: bool = True

    @staticmethod
    def embed_dim(config: PreTrainedConfig) -> int:
        """Width of the joint image-text space of a backbone with configuration `config`."""
        raise NotImplementedError

    def dense_image_features(
        self,
        pixel_values: torch.FloatTensor,
        guidance_layers: list[int],
        visual_prompts: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ) -> CatSegBackboneOutput:
        """Dense embeddings and the patch tokens of the 0-based vision blocks `guidance_layers` for `pixel_values`
        `(batch, 3, size, size)` at the size CAT-Seg runs at; `visual_prompts` `(depth, length, hidden)`, where
        supported. `output_hidden_states` may list the indices to keep; the others are `None`."""
        raise NotImplementedError

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        """The text tower's output for prompts `(num_prompts, length)`; `pooler_output` `(num_prompts, embed_dim)`
        holds the text embeddings in the joint space (not yet normalised)."""
        raise NotImplementedError

    @staticmethod
    def parameter_role(name: str) -> tuple[str, str] | None:
        """`(tower, role)` of the backbone parameter `name` for the fine-tuning policies (tower `"vision"` or
        `"text"`, role one of `"query"`, `"key"`, `"value"`, `"attention"`, `"block"`, `"position"`, as
        `FINETUNE_POLICIES` names them), or `None` for a parameter no policy trains."""
        raise NotImplementedError

    def unused_parameter(self, name: str) -> bool:
        """Whether CAT-Seg's use of the backbone leaves parameter `name` out of every forward pass: it stays frozen
        whatever the policy, since it could get no gradient (and distributed training could not skip the
        unused-parameter search)."""
        raise NotImplementedError

    @staticmethod
    def text_settings() -> dict:
        """How prompts must be tokenised for this text tower: `{"lowercase": bool}` plus any of `padding`,
        `max_length` and `padding_side` as the tokenizer takes them (absent: the tokenizer's own, padding to the
        longest prompt)."""
        raise NotImplementedError


CATSEG_BACKBONES: dict[str, type[CatSegBackbone]] = {}


def register_backbone(model_type: str):
    """Class decorator: make the adapter the CAT-Seg backbone of configurations whose `model_type` is `model_type`."""

    def register(adapter: type[CatSegBackbone]) -> type[CatSegBackbone]:
        CATSEG_BACKBONES[model_type] = adapter
        return adapter

    return register


def backbone_class(config: PreTrainedConfig) -> type[CatSegBackbone]:
    """The registered adapter of a backbone configuration; a clear error when there is none."""
    adapter = CATSEG_BACKBONES.get(config.model_type)
    if adapter is None:
        raise ValueError(
            f"CAT-Seg has no backbone adapter for model_type {config.model_type!r} (it has: "
            f"{', '.join(sorted(CATSEG_BACKBONES))}); write one (see the README's 'Add a backbone')."
        )
    return adapter


def patch_tokens_to_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """`(batch, grid * grid, dim)` patch tokens -> `(batch, dim, grid, grid)`."""
    return tokens.transpose(1, 2).unflatten(2, (grid, grid))


def _attention_role(name: str) -> str | None:
    """The role of a parameter of a transformer block (`...layers.N.<module>.<param>`), or `None`."""
    module, parameter = name.split(".")[-2:]
    if ".self_attn." in name:
        roles = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
        return roles.get(module, "attention") if parameter == "weight" else "attention"
    return "block"


def _encoder_role(name: str) -> tuple[str, str] | None:
    """The role of the parameters that CLIP and SigLIP name alike: blocks and the vision position embedding."""
    tower = name.split("_model.", 1)[0]
    if tower not in ("vision", "text"):
        return None
    if ".encoder.layers." in name:
        return tower, _attention_role(name)
    if name == "vision_model.embeddings.position_embedding.weight":
        return tower, "position"
    return None


# oneDNN's linear with a fused post-op, the op `torch.compile` uses on CPU; absent from builds without oneDNN.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def linear_activation(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.linear(hidden_states, weight, bias)`, then `activation` (`None`, `"gelu"` (exact, erf) or `"relu"`) or
    `+ residual` (of the output's shape; not both).

    Used by the backbone's blocks and the cost aggregation. In CPU fp32 inference this is one oneDNN call with the
    activation or the addition as a post-op. PyTorch's `F.linear` goes to MKL's `sgemm`, which on AMD CPUs runs its
    AVX2 code where the CPU has AVX-512, and first copies the bias into every output row; at the aggregation's shapes
    (thousands of tokens, 128 to 512 features) oneDNN ran 1.1-1.4x faster on a 2-core AMD EPYC, and a fused
    post-op costs no extra pass over memory. Under autograd (the oneDNN op has no backward), on other devices and
    dtypes, with oneDNN switched off (`torch.backends.mkldnn.enabled = False`), and while tracing for
    `torch.compile` / `torch.export`, it is the plain composition.
    """
    if activation is not None and residual is not None:
        raise ValueError("linear_activation fuses an activation or a residual addition, not both.")
    # The compile check comes first: dynamo refuses to trace `torch.backends.mkldnn.is_available`.
    if (
        not torch.compiler.is_compiling()
        and _ONEDNN_LINEAR is not None
        and hidden_states.device.type == "cpu"
        and hidden_states.dtype == weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad))
    ):
        if residual is not None:
            return _ONEDNN_LINEAR.binary(hidden_states, residual, weight, bias, "add")
        return _ONEDNN_LINEAR(
            hidden_states, weight, bias, activation or "none", [], "none" if activation == "gelu" else ""
        )
    hidden_states = F.linear(hidden_states, weight, bias)
    if residual is not None:
        return hidden_states + residual
    if activation is None:
        return hidden_states
    return F.gelu(hidden_states) if activation == "gelu" else F.relu(hidden_states)


def clip_block_onednn(block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' `CLIPEncoderLayer` `block` on `hidden_states` `(batch, tokens, hidden)`, without a mask, with
    each linear one [`linear_activation`] call: the attention's output projection and the MLP's second layer with
    their residual additions fused, the MLP's first layer with its activation where that is the exact GELU (CLIP's
    QuickGELU runs after it), and SDPA in between.

    The same function as `block(hidden_states, None)` to float summation order (tested). For inference: it bypasses
    the block's modules, so it has neither their hooks nor their attention probabilities.
    """
    attention, mlp = block.self_attn, block.mlp
    normed = block.layer_norm1(hidden_states)
    heads = (*normed.shape[:2], attention.num_heads, attention.head_dim)
    query, key, value = (
        linear_activation(normed, projection.weight, projection.bias).view(heads).transpose(1, 2)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    context = F.scaled_dot_product_attention(query, key, value, scale=attention.scale)
    context = context.transpose(1, 2).reshape(hidden_states.shape)
    hidden_states = linear_activation(
        context, attention.out_proj.weight, attention.out_proj.bias, residual=hidden_states
    )
    return clip_mlp_onednn(mlp, block.layer_norm2(hidden_states), hidden_states)


def clip_mlp_onednn(mlp: nn.Module, normed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + mlp(normed)` for transformers' `CLIPMLP` `mlp`, through [`linear_activation`]."""
    if mlp.config.hidden_act == "gelu":
        hidden = linear_activation(normed, mlp.fc1.weight, mlp.fc1.bias, "gelu")
    else:
        hidden = mlp.activation_fn(linear_activation(normed, mlp.fc1.weight, mlp.fc1.bias))
    return linear_activation(hidden, mlp.fc2.weight, mlp.fc2.bias, residual=residual)


@register_backbone("clip")
class CatSegClipBackbone(CLIPModel, CatSegBackbone):
    """Any `CLIPModel` as CAT-Seg's backbone, exactly as the official CAT-Seg uses OpenAI CLIP.

    The dense embeddings come from the last vision block's value path: `out_proj(v_proj(norm1(x)))` plus the input
    CLS token as the residual, then the block's MLP, `post_layernorm` and `visual_projection` on every token. That
    path replaces the block's attention, so the tower is run block by block here rather than through its forward
    (which would also run the last block's attention, for nothing); deep visual prompt tokens ride along after the
    CLS token of the first `len(visual_prompts)` blocks.
    """

    catseg_prefix = "clip"
    supports_visual_prompts = True

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    @staticmethod
    def embed_dim(config: PreTrainedConfig) -> int:
        return config.projection_dim

    def dense_image_features(
        self,
        pixel_values: torch.FloatTensor,
        guidance_layers: list[int],
        visual_prompts: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ) -> CatSegBackboneOutput:
        """See [`CatSegBackbone.dense_image_features`]. Hidden states: the embeddings after `pre_layrnorm`, then every
        block's output, the last one being its dense value path, each `(batch, 1 + grid * grid, hidden)`."""
        vision = self.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        *blocks, last_block = vision.encoder.layers
        grid = round((hidden_states.shape[1] - 1) ** 0.5)
        kept = _kept_hidden_states(output_hidden_states, len(vision.encoder.layers) + 1)
        all_hidden_states = [hidden_states if 0 in kept else None]
        attentions = [] if output_attentions else None
        taps = {}
        # The oneDNN form records no autograd graph worth having (it bypasses checkpointing): inference only.
        onednn = (
            self.fast_path
            and not output_attentions
            and not torch.is_grad_enabled()
            and all(_plain_clip_block(block) for block in vision.encoder.layers)
        )
        for index, block in enumerate(blocks):
            prompts = visual_prompts[index] if visual_prompts is not None and index < len(visual_prompts) else None
            hidden_states = _run_clip_block(block, hidden_states, prompts, attentions, onednn)
            if index in guidance_layers:
                taps[index] = patch_tokens_to_map(hidden_states[:, 1:], grid)
            all_hidden_states.append(hidden_states if index + 1 in kept else None)
        hidden_states = _clip_value_path(last_block, hidden_states, onednn)
        all_hidden_states.append(hidden_states if len(all_hidden_states) in kept else None)
        dense = self.visual_projection(vision.post_layernorm(hidden_states))
        return CatSegBackboneOutput(
            dense_image_features=patch_tokens_to_map(dense[:, 1:], grid),
            guidance_features=tuple(taps[index] for index in guidance_layers),
            hidden_states=tuple(all_hidden_states) if kept else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        """See [`CatSegBackbone.encode_text`]. Outside `torch.compile`/`torch.export`, prompts are cut after their
        longest end-of-text token: attention is causal and the embedding is read at the end-of-text token, so the
        padding after it cannot change the result and is not worth computing (a traced graph cannot cut by data)."""
        if not torch.compiler.is_compiling():
            length = self._prompt_length(input_ids, attention_mask)
            input_ids = input_ids[:, :length]
            attention_mask = attention_mask[:, :length] if attention_mask is not None else None
        return self.get_text_features(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def _prompt_length(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> int:
        """Tokens up to the last prompt's end-of-text token (all of them when some prompt has none)."""
        if attention_mask is not None:
            return int(attention_mask.sum(dim=1).max())
        eos = self.config.text_config.eos_token_id
        # Legacy CLIP configurations say 2 and mean the highest id, as CLIP's own pooling does.
        is_eos = input_ids == (eos if eos != 2 else input_ids.max())
        if not bool(is_eos.any(dim=1).all()):
            return input_ids.shape[1]
        return int(is_eos.int().argmax(dim=1).max()) + 1

    @staticmethod
    def parameter_role(name: str) -> tuple[str, str] | None:
        return _encoder_role(name)

    def unused_parameter(self, name: str) -> bool:
        last = self.config.vision_config.num_hidden_layers - 1
        prefix = f"vision_model.encoder.layers.{last}.self_attn."
        return name.startswith((prefix + "q_proj.", prefix + "k_proj."))

    @staticmethod
    def text_settings() -> dict:
        return {"lowercase": False}


def _kept_hidden_states(output_hidden_states: bool | list[int], count: int) -> set[int]:
    """The indices of the `count` hidden states to return: all, none, or those listed (negative from the end)."""
    if isinstance(output_hidden_states, (list, tuple)):
        return {index % count for index in output_hidden_states}
    return set(range(count)) if output_hidden_states else set()


def _plain_clip_block(block: nn.Module) -> bool:
    """Whether [`clip_block_onednn`], which reads the block's weights directly, computes what `block` computes: every
    linear a plain `nn.Linear` (not PEFT's LoRA wrapper, not a quantised layer) and no forward hooks in it (but
    transformers' output capturing, which only records)."""
    attention, mlp = block.self_attn, block.mlp
    linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj, mlp.fc1, mlp.fc2)
    return all(type(linear) is nn.Linear for linear in linears) and not any(
        _changing_hooks(module) for module in block.modules()
    )


def _changing_hooks(module: nn.Module) -> bool:
    """Whether `module` has forward hooks other than transformers' output capturing, which only records outputs."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(getattr(hook, "__module__", None) != "transformers.utils.output_capturing" for hook in hooks)


def _clip_value_path(block: nn.Module, hidden_states: torch.Tensor, onednn: bool) -> torch.Tensor:
    """The last CLIP block with its attention replaced by the value path: `out_proj(v_proj(norm1(x)))` plus the CLS
    token as the residual, then the block's MLP; through [`linear_activation`] with `onednn`."""
    attention = block.self_attn
    normed = block.layer_norm1(hidden_states)
    if not onednn:
        hidden_states = attention.out_proj(attention.v_proj(normed)) + hidden_states[:, :1]
        return hidden_states + block.mlp(block.layer_norm2(hidden_states))
    values = linear_activation(normed, attention.v_proj.weight, attention.v_proj.bias)
    hidden_states = (
        linear_activation(values, attention.out_proj.weight, attention.out_proj.bias) + hidden_states[:, :1]
    )
    return clip_mlp_onednn(block.mlp, block.layer_norm2(hidden_states), hidden_states)


def _run_clip_block(
    block: nn.Module,
    hidden_states: torch.Tensor,
    prompts: torch.Tensor | None,
    attentions: list | None,
    onednn: bool = False,
) -> torch.Tensor:
    """A CLIP block, as [`clip_block_onednn`] with `onednn`; `prompts` `(length, hidden)` ride along after the CLS
    token and are dropped after the block. With `attentions` (a list, not with `onednn`), the block's attention
    probabilities are appended to it."""
    if prompts is not None:
        prompts = prompts.expand(hidden_states.shape[0], -1, -1)
        hidden_states = torch.cat([hidden_states[:, :1], prompts, hidden_states[:, 1:]], dim=1)
    if onednn:
        hidden_states = clip_block_onednn(block, hidden_states)
        return hidden_states if prompts is None else _drop_prompts(hidden_states, prompts.shape[1])
    hook = None
    if attentions is not None:
        # CLIP's layer returns only its hidden states; its attention module also returns the probabilities.
        hook = block.self_attn.register_forward_hook(lambda module, args, output: attentions.append(output[1]))
    try:
        hidden_states = block(hidden_states, None)
    finally:
        if hook is not None:
            hook.remove()
    return hidden_states if prompts is None else _drop_prompts(hidden_states, prompts.shape[1])


def _drop_prompts(hidden_states: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([hidden_states[:, :1], hidden_states[:, 1 + length :]], dim=1)


@register_backbone("siglip")
class CatSegSiglipBackbone(SiglipModel, CatSegBackbone):
    """Any `SiglipModel` as CAT-Seg's backbone: SigLIP, and SigLIP 2's fixed-resolution ("FixRes") checkpoints.

    SigLIP has no CLS token: its image embedding is an attention-pooling head ("MAP": one learned probe attends over
    every token, then a residual MLP) on the post-normalised tokens. The dense embedding of a patch is what that head
    outputs for the patch alone: with a single key the attention weights are 1, so the head reduces to the value and
    output projections followed by its residual MLP. It is MaskCLIP's reading of an attention pool (Zhou et al.,
    ECCV 2022, did the same with the value and output projections of ResNet CLIP's pool), the counterpart of the
    CLIP adapter's value path, and it lands each patch in the space of the text embeddings, as the cost volume needs.
    The tower runs through its own forward, and the guidance and dense features are read from its public outputs
    (`hidden_states` and `last_hidden_state`); the probe (only the pooled embedding reads it) stays frozen.

    SigLIP's text tower reads the embedding at the last position and was trained on prompts padded to a fixed
    length (64) without an attention mask, so [`text_settings`] asks the processor for that padding and
    [`encode_text`] attends over the padding as in training; SigLIP 2 was also trained on lower-cased text.
    """

    catseg_prefix = "siglip"

    @staticmethod
    def embed_dim(config: PreTrainedConfig) -> int:
        return config.vision_config.hidden_size

    def dense_image_features(
        self,
        pixel_values: torch.FloatTensor,
        guidance_layers: list[int],
        visual_prompts: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ) -> CatSegBackboneOutput:
        """See [`CatSegBackbone.dense_image_features`]. Hidden states: the tower's own (the embeddings, then every
        block's output), each `(batch, grid * grid, hidden)`."""
        if visual_prompts is not None:
            raise ValueError("Deep visual prompt tuning is implemented for CLIP backbones only.")
        vision = self.vision_model
        output = vision(
            pixel_values,
            interpolate_pos_encoding=True,
            output_hidden_states=True,
            output_attentions=output_attentions,
            return_dict=True,
        )
        tokens = output.last_hidden_state
        grid = round(tokens.shape[1] ** 0.5)
        dense = siglip_dense_embeddings(vision.head, tokens)
        kept = _kept_hidden_states(output_hidden_states, len(output.hidden_states))
        return CatSegBackboneOutput(
            dense_image_features=patch_tokens_to_map(dense, grid),
            guidance_features=tuple(patch_tokens_to_map(output.hidden_states[i + 1], grid) for i in guidance_layers),
            hidden_states=tuple(s if i in kept else None for i, s in enumerate(output.hidden_states))
            if kept
            else None,
            attentions=output.attentions if output_attentions else None,
        )

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        return self.get_text_features(
            input_ids=input_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    @staticmethod
    def parameter_role(name: str) -> tuple[str, str] | None:
        if name.startswith("vision_model.head."):
            # The head's packed q/k/v tensor counts as a value projection: the dense path reads only its value rows.
            if name == "vision_model.head.attention.in_proj_weight":
                return "vision", "value"
            if name == "vision_model.head.probe":
                return None
            return "vision", "attention" if ".attention." in name else "block"
        return _encoder_role(name)

    def unused_parameter(self, name: str) -> bool:
        return name == "vision_model.head.probe"

    @staticmethod
    def text_settings() -> dict:
        return {"lowercase": True, "padding": "max_length", "max_length": 64, "padding_side": "right"}


def siglip_dense_embeddings(head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention-pooling head applied to every token on its own: `(batch, tokens, hidden)` post-normalised
    tokens -> `(batch, tokens, hidden)` embeddings (see [`CatSegSiglipBackbone`])."""
    attention = head.attention
    dim = tokens.shape[-1]
    values = F.linear(tokens, attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :])
    pooled = attention.out_proj(values)
    return pooled + head.mlp(head.layernorm(pooled))


__all__ = [
    "CATSEG_BACKBONES",
    "CatSegBackbone",
    "CatSegBackboneOutput",
    "CatSegClipBackbone",
    "CatSegSiglipBackbone",
    "register_backbone",
]
