"""OpenAI CLIP's state-dict names -> transformers' `CLIPModel` names: the one key map both converters use.

CAT-Seg's and LSeg's official checkpoints embed an OpenAI CLIP (``clip.load``'s module names); the ports hold a
transformers ``CLIPModel`` (or its text half) under their own prefix.
"""

from __future__ import annotations

import re

import torch

# Single tensors, outside the residual blocks.
_SINGLE = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}

# OpenAI CLIP multiplies by these from the right; a transformers Linear layer stores the transpose.
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}

# Inside `[visual.]transformer.resblocks.{i}.`.
_BLOCK = {
    "attn.q_proj_weight": "self_attn.q_proj.weight",
    "attn.k_proj_weight": "self_attn.k_proj.weight",
    "attn.v_proj_weight": "self_attn.v_proj.weight",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}


def map_openai_clip_key(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The `CLIPModel` tensors of one OpenAI CLIP tensor `name` (without any outer prefix), or `None` when the name
    is not part of OpenAI CLIP. A fused ``in_proj`` becomes the three q/k/v projections."""
    if name in _SINGLE:
        return {_SINGLE[name]: tensor}
    if name in _PROJECTIONS:
        return {_PROJECTIONS[name]: tensor.t().contiguous()}
    match = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", name)
    if match is None:
        return None
    block = f"{'vision_model' if match[1] else 'text_model'}.encoder.layers.{match[2]}."
    part = match[3]
    if part in _BLOCK:
        return {block + _BLOCK[part]: tensor}
    if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = part.rsplit("_", 1)[1]
        return {
            f"{block}self_attn.{projection}.{kind}": chunk.contiguous()
            for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0))
        }
    return None


__all__ = ["map_openai_clip_key"]
