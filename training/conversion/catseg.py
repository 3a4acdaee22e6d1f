"""Convert the official CAT-Seg checkpoints (`model_base.pth`, `model_large.pth`) to a transformers folder.

    catseg-convert --checkpoint model_base.pth --output catseg-vit-base
    catseg-convert --checkpoint base --output catseg-vit-base   # downloads it

The folder carries the remote code, so `AutoModelForSemanticSegmentation.from_pretrained(folder,
trust_remote_code=True)` loads it anywhere. Every official key is mapped and loaded strictly.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from modeling_catseg.configuration_catseg import CatSegConfig
from modeling_catseg.modeling_catseg import CatSegForSemanticSegmentation

from training.core.atomic import write_folder_atomic
from training.conversion.state_dicts import load_state_dict_strictly
from training.conversion.openai_clip_keys import map_openai_clip_key
from training.core.errors import ConversionError

OFFICIAL_CHECKPOINTS = {
    "base": "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth",
    "large": "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_large.pth",
}

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGGREGATOR_PREFIX = "sem_seg_head.predictor.transformer."

# Aggregator and decoder, official regex -> our name (applied after the prefix is stripped).
_AGGREGATOR_RULES = [
    (r"conv1\.(weight|bias)", r"catseg.cost_embedding.\1"),
    (r"guidance_projection\.0\.(weight|bias)", r"catseg.appearance_guidance_projection.\1"),
    (r"text_guidance_projection\.0\.(weight|bias)", r"catseg.text_guidance_projection.\1"),
    (r"decoder_guidance_projection\.(\d+)\.0\.(weight|bias)", r"upsampling_decoder.guidance_projections.\1.\2"),
    (
        r"layers\.(\d+)\.swin_block\.guidance_norm\.(weight|bias)",
        r"catseg.layers.\1.spatial_aggregation.guidance_norm.\2",
    ),
    (r"layers\.(\d+)\.swin_block\.block_(\d)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", None),
    (r"layers\.(\d+)\.swin_block\.block_(\d)\.attn\.(q|k|v|proj)\.(weight|bias)", None),
    (
        r"layers\.(\d+)\.attention\.(norm1|norm2|padding_tokens|padding_guidance)(\.weight|\.bias|)",
        r"catseg.layers.\1.class_aggregation.\2\3",
    ),
    (
        r"layers\.(\d+)\.attention\.attention\.(q|k|v)\.(weight|bias)",
        r"catseg.layers.\1.class_aggregation.attention.\2_proj.\3",
    ),
    (r"layers\.(\d+)\.attention\.MLP\.0\.(weight|bias)", r"catseg.layers.\1.class_aggregation.mlp.fc1.\2"),
    (r"layers\.(\d+)\.attention\.MLP\.2\.(weight|bias)", r"catseg.layers.\1.class_aggregation.mlp.fc2.\2"),
    (r"decoder(\d)\.up\.(weight|bias)", None),
    (r"decoder(\d)\.conv\.double_conv\.([0134])\.(weight|bias)", None),
    (r"head\.(weight|bias)", r"upsampling_decoder.head.\1"),
]

_ATTENTION_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj": "out_proj"}
_DOUBLE_CONV_NAMES = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}


class CheckpointConversionError(ConversionError):
    """The file is not a usable official CAT-Seg checkpoint; the message says why."""


def load_official_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint: a local path, `"base"`/`"large"`, or an http(s) URL."""
    path = _resolve_checkpoint(str(checkpoint))
    try:
        container = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsupported:  # torch's own text would suggest allow-listing the object: never relay that
            raise CheckpointConversionError(
                f"{path} holds Python objects beyond tensors ({unsupported.group(1)}), which safe loading refuses; "
                "the official CAT-Seg checkpoints hold only tensors. Refusing to load it."
            ) from None
        raise CheckpointConversionError(
            f"{path} could not be read as a PyTorch checkpoint ({type(error).__name__}: {error}). Is the file "
            "complete? Download it again if it was cut short."
        ) from error
    state_dict = container.get("model", container) if isinstance(container, dict) else None
    if not isinstance(state_dict, dict) or not any(key.startswith(AGGREGATOR_PREFIX) for key in state_dict):
        found = list(state_dict)[:5] if isinstance(state_dict, dict) else type(container).__name__
        raise CheckpointConversionError(
            f"{path} is not a CAT-Seg checkpoint: expected keys under '{AGGREGATOR_PREFIX}' (the official "
            f"model_base.pth / model_large.pth layout), found {found}."
        )
    return state_dict


def _resolve_checkpoint(checkpoint: str) -> str:
    url = OFFICIAL_CHECKPOINTS.get(checkpoint, checkpoint)
    if not url.startswith(("http://", "https://")):
        if not os.path.isfile(url):
            raise CheckpointConversionError(
                f"{checkpoint} is neither a file nor one of {sorted(OFFICIAL_CHECKPOINTS)} nor a URL."
            )
        return url
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "catseg-official"
    target = cache / url.rsplit("/", 1)[-1]
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            torch.hub.download_url_to_file(url, str(partial), progress=True)
        except OSError as error:  # URLError, timeouts, refused connections
            reason = getattr(error, "reason", None) or error
            raise CheckpointConversionError(
                f"could not download {url} ({reason}); download it by hand (e.g. `curl -L -o {target.name} {url}`) "
                f"and pass --checkpoint /path/to/{target.name}"
            ) from None
        os.replace(partial, target)
    return str(target)


def infer_catseg_config(
    state_dict: dict[str, torch.Tensor],
    vision_num_heads: int | None = None,
    text_num_heads: int | None = None,
    **config_kwargs: Any,
) -> CatSegConfig:
    """Read a [`CatSegConfig`] off the tensor shapes of an official state dict.

    Head counts cannot be read from weights; like the official code they default to `width // 64`. The guidance
    layers follow the official rule: blocks 3 and 7 for a patch-16 CLIP, 7 and 15 otherwise.
    """

    def shape(key: str) -> torch.Size:
        return state_dict[key].shape

    def count(pattern: str) -> int:
        return len({m.group(1) for key in state_dict if (m := re.fullmatch(pattern, key))})

    c, a = CLIP_PREFIX, AGGREGATOR_PREFIX
    vision_width, _, patch, _ = shape(c + "visual.conv1.weight")
    text_width = shape(c + "token_embedding.weight")[1]
    vision_layers = count(re.escape(c) + r"visual\.transformer\.resblocks\.(\d+)\..*")
    text_layers = count(re.escape(c) + r"transformer\.resblocks\.(\d+)\..*")
    positions = shape(c + "visual.positional_embedding")[0]
    window_count, window_area, _ = shape(a + "layers.0.swin_block.block_2.attn_mask")
    window = math.isqrt(window_area)
    grid = window * math.isqrt(window_count)
    hidden_dim, _, kernel, _ = shape(a + "conv1.weight")
    clip_config = {
        "text_config": {
            "hidden_size": text_width,
            "intermediate_size": shape(c + "transformer.resblocks.0.mlp.c_fc.weight")[0],
            "num_attention_heads": text_num_heads or text_width // 64,
            "num_hidden_layers": text_layers,
            "vocab_size": shape(c + "token_embedding.weight")[0],
            "max_position_embeddings": shape(c + "positional_embedding")[0],
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "eos_token_id": 49407,
        },
        "vision_config": {
            "hidden_size": vision_width,
            "intermediate_size": shape(c + "visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
            "num_attention_heads": vision_num_heads or vision_width // 64,
            "num_hidden_layers": vision_layers,
            "image_size": math.isqrt(positions - 1) * patch,
            "patch_size": patch,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
        "projection_dim": shape(c + "visual.proj")[1],
    }
    stages = count(re.escape(a) + r"decoder(\d)\.up\.weight")
    inferred = {
        "backbone_config": {"model_type": "clip", **clip_config},
        "image_size": grid * patch,
        "guidance_layers": [3, 7] if patch == 16 else [7, 15],
        "hidden_dim": hidden_dim,
        "cost_embed_kernel_size": kernel,
        "num_layers": count(re.escape(a) + r"layers\.(\d+)\..*"),
        "window_size": window,
        "mlp_ratio": shape(a + "layers.0.swin_block.block_1.mlp.fc1.weight")[0] // hidden_dim,
        "appearance_guidance_dim": shape(a + "guidance_projection.0.weight")[0],
        "text_guidance_dim": shape(a + "text_guidance_projection.0.weight")[0],
        "decoder_dims": [shape(f"{a}decoder{i + 1}.conv.double_conv.0.weight")[0] for i in range(stages)],
        "decoder_guidance_dims": [shape(f"upsample{i + 1}.weight")[1] for i in range(stages)],
        "decoder_guidance_proj_dims": [
            shape(f"{a}decoder_guidance_projection.{i}.0.weight")[0] for i in range(stages)
        ],
    }
    return CatSegConfig(**{**inferred, **config_kwargs})


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map every official key to our names. Raises with the list of keys that have no mapping."""
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        if key.endswith("attn_mask"):  # recomputed from the config (and checked against it by the caller)
            continue
        mapped = _map_key(key, tensor)
        if mapped is None:
            unmapped.append(key)
        else:
            converted.update(mapped)
    if unmapped:
        raise CheckpointConversionError(
            f"{len(unmapped)} checkpoint keys have no CAT-Seg counterpart: {unmapped[:10]}"
            + (" ..." if len(unmapped) > 10 else "")
        )
    return converted


def _map_key(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    if key.startswith("upsample"):
        match = re.fullmatch(r"upsample(\d)\.(weight|bias)", key)
        return {f"upsampling_decoder.guidance_upsamplers.{int(match[1]) - 1}.{match[2]}": tensor} if match else None
    if key.startswith(CLIP_PREFIX):
        mapped = map_openai_clip_key(key[len(CLIP_PREFIX) :], tensor)
        return {f"catseg.clip.{name}": value for name, value in mapped.items()} if mapped is not None else None
    if key.startswith(AGGREGATOR_PREFIX):
        name = key[len(AGGREGATOR_PREFIX) :]
        for pattern, replacement in _AGGREGATOR_RULES:
            match = re.fullmatch(pattern, name)
            if match:
                return {_aggregator_name(match, replacement): tensor}
    return None


def _aggregator_name(match: re.Match, replacement: str | None) -> str:
    if replacement is not None:
        return match.expand(replacement)
    groups = match.groups()
    if match.re.pattern.startswith(r"layers\.(\d+)\.swin_block"):
        layer, block, part, kind = groups
        part = _ATTENTION_NAMES.get(part, part)
        where = f"attention.{part}" if part in _ATTENTION_NAMES.values() else part
        return f"catseg.layers.{layer}.spatial_aggregation.blocks.{int(block) - 1}.{where}.{kind}"
    if len(groups) == 2:  # decoder{n}.up
        return f"upsampling_decoder.stages.{int(groups[0]) - 1}.upsample.{groups[1]}"
    stage, index, kind = groups
    return f"upsampling_decoder.stages.{int(stage) - 1}.{_DOUBLE_CONV_NAMES[index]}.{kind}"


def load_official_weights(model: CatSegForSemanticSegmentation, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an official state dict into `model` strictly; errors name every missing, unexpected or misshapen key."""
    problems = []
    for key, tensor in state_dict.items():
        if key.endswith("attn_mask"):
            layer = int(re.search(r"layers\.(\d+)\.", key)[1])
            ours = model.catseg.layers[layer].spatial_aggregation.blocks[1].shift_mask(tensor)
            if ours is None or ours.shape != tensor.shape or not torch.equal(ours, tensor):
                problems.append(f"{key} does not match the shift mask of the config (window_size / image_size)")
    try:
        load_state_dict_strictly(
            model, convert_state_dict(state_dict), "The checkpoint does not fit the CAT-Seg config", problems
        )
    except ValueError as error:
        raise CheckpointConversionError(str(error)) from None


def convert_catseg_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    config: CatSegConfig | None = None,
    overwrite: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Convert an official checkpoint into a `save_pretrained` folder with remote code, written atomically.

    Args:
        checkpoint: a local `.pth`, `"base"` / `"large"` (the released models, downloaded once), or a URL.
        output_dir: the folder to write. It is only replaced when `overwrite=True`.
        config: the config to build; inferred from the tensor shapes by default (`config_kwargs` override fields
            of the inferred config, e.g. `vision_num_heads=` for non-standard widths).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
        )
    state_dict = load_official_state_dict(checkpoint)
    if config is None:
        try:
            config = infer_catseg_config(state_dict, **config_kwargs)
        except KeyError as error:
            raise CheckpointConversionError(f"The checkpoint lacks the key {error} that CAT-Seg needs.") from error
    model = CatSegForSemanticSegmentation(config).eval()
    load_official_weights(model, state_dict)
    write_folder_atomic(output_dir, model.save_pretrained)
    return output_dir
