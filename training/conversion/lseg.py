"""Convert an official LSeg checkpoint (isl-org/lang-seg) into a transformers folder that carries its own code.

    lseg-convert --checkpoint demo_e200.ckpt --output lseg-demo

`--checkpoint` is a local file, a URL, or the name of a released checkpoint (`demo_e200`, `fss_l16`), which is
downloaded from the authors' Google Drive. The folder loads anywhere with
`AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)`.

Every key of the checkpoint is mapped or deliberately dropped (timm's unused final norm and ImageNet classifier and
CLIP's unused image tower and logit scale), and the model is loaded strictly: anything else is an error that names
the keys.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch
from transformers import initialization as init

from modeling_lseg.configuration_lseg import LSegConfig
from modeling_lseg.modeling_lseg import LSegForSemanticSegmentation

from training.core.atomic import write_folder_atomic
from training.conversion.state_dicts import load_state_dict_strictly
from training.conversion.openai_clip_keys import map_openai_clip_key
from training.core.errors import ConversionError

# The released checkpoints with the ViT-L/16 image encoder (the README's model zoo). The other zero-shot
# checkpoints (pascal_fold*, coco_fold*, fss_rn101) use a ResNet-101 image encoder, which this port does not have.
OFFICIAL_CHECKPOINTS = {
    "demo_e200": "https://drive.google.com/file/d/1FTuHY1xPUkM-5gaDtMfgCl3D0gR89WV7/view?usp=sharing",
    "fss_l16": "https://drive.google.com/file/d/1Nplkc_JsHIS55d--K2vonOOC3HrppzYy/view?usp=sharing",
}

# LSeg's OpenAI CLIP, mapped by the key map shared with CAT-Seg (`training.conversion.openai_clip_keys`).
CLIP_PREFIX = "clip_pretrained."

# Unused by LSeg's forward pass, so the port does not keep them.
DROPPED_KEYS = re.compile(r"pretrained\.model\.(head|norm)\.(weight|bias)|clip_pretrained\.(visual\..+|logit_scale)")


class LSegConversionError(ConversionError):
    """The checkpoint cannot be converted; the message says why."""


# Original key (without `net.`) -> transformers key, per prefix of the original. In a template, `\N` is a regex
# group, `{stage}` the 0-based index of the 1-based `act_postprocess{k}`/`layer{k}_rn` in group 1, and `{fusion}`
# transformers' fusion layer of `refinenet{k}` in group 1 (refinenet4, the deepest and first applied, is layer 0).
# A fused q/k/v projection maps to a "QKV" key that `_split_qkv` splits.
_RULES_BY_PREFIX = {
    ("pretrained.model.", "lseg.dpt."): [
        (r"cls_token", "embeddings.cls_token"),
        (r"pos_embed", "embeddings.position_embeddings"),
        (r"patch_embed\.proj\.(\w+)", r"embeddings.patch_embeddings.projection.\1"),
        (r"blocks\.(\d+)\.norm1\.(\w+)", r"encoder.layer.\1.layernorm_before.\2"),
        (r"blocks\.(\d+)\.norm2\.(\w+)", r"encoder.layer.\1.layernorm_after.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(\w+)", r"encoder.layer.\1.attention.attention.QKV.\2"),
        (r"blocks\.(\d+)\.attn\.proj\.(\w+)", r"encoder.layer.\1.attention.output.dense.\2"),
        (r"blocks\.(\d+)\.mlp\.fc1\.(\w+)", r"encoder.layer.\1.intermediate.dense.\2"),
        (r"blocks\.(\d+)\.mlp\.fc2\.(\w+)", r"encoder.layer.\1.output.dense.\2"),
    ],
    ("pretrained.", "lseg.neck.reassemble_stage."): [
        (r"act_postprocess(\d)\.0\.project\.0\.(\w+)", r"readout_projects.{stage}.0.\2"),
        (r"act_postprocess(\d)\.3\.(\w+)", r"layers.{stage}.projection.\2"),
        (r"act_postprocess(\d)\.4\.(\w+)", r"layers.{stage}.resize.\2"),
    ],
    ("scratch.refinenet", "lseg.neck.fusion_stage.layers."): [
        (r"(\d)\.out_conv\.(\w+)", r"{fusion}.projection.\2"),
        (r"(\d)\.resConfUnit(\d)\.conv(\d)\.(\w+)", r"{fusion}.residual_layer\2.convolution\3.\4"),
        (r"(\d)\.resConfUnit(\d)\.bn(\d)\.(\w+)", r"{fusion}.residual_layer\2.batch_norm\3.\4"),
    ],
    ("scratch.", "lseg."): [
        (r"layer(\d)_rn\.weight", r"neck.convs.{stage}.weight"),
        (r"head1\.(\w+)", r"pixel_embeddings.projection.\1"),
    ],
    ("scratch.head_block.depthwise.depthwise.", "spatial_regularization."): [(r"(weight|bias)", r"\1")],
}  # fmt: skip
KEY_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(re.escape(original) + pattern), converted + template)
    for (original, converted), rules in _RULES_BY_PREFIX.items()
    for pattern, template in rules
]

# transformers' names of the query, key and value projections that a fused "QKV" key splits into.
_QKV_NAMES = {"attention.attention.QKV": ("query", "key", "value")}


def resolve_checkpoint(checkpoint: str | os.PathLike, download_dir: Path) -> Path:
    """A local path as is; a released checkpoint's name or a URL downloaded into `download_dir`."""
    source = OFFICIAL_CHECKPOINTS.get(str(checkpoint), str(checkpoint))
    if not re.match(r"https?://", source):
        path = Path(source)
        if not path.is_file():
            raise LSegConversionError(
                f"{checkpoint} is neither a file, a URL nor a released checkpoint ({', '.join(OFFICIAL_CHECKPOINTS)})."
            )
        return path
    page = source
    drive = re.match(r"https://drive\.google\.com/file/d/([\w-]+)", source)
    if drive:
        # The direct download of a shared file, past Drive's "too large to scan for viruses" page.
        source = f"https://drive.usercontent.google.com/download?id={drive.group(1)}&export=download&confirm=t"
    target = download_dir / "checkpoint.ckpt"
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as file:
            shutil.copyfileobj(response, file, length=1 << 20)
    except OSError as error:  # URLError, timeouts, refused connections
        reason = getattr(error, "reason", None) or error
        raise LSegConversionError(
            f"could not download {source} ({reason}); download it by hand (open {page} in a browser) "
            "and pass --checkpoint /path/to/the/file.ckpt"
        ) from None
    with open(target, "rb") as file:
        head = file.read(64).lstrip()
    if head.startswith(b"<"):
        raise LSegConversionError(
            f"{source} returned a web page, not a checkpoint (Google Drive may be asking to sign in or "
            "rate-limiting). Download the file in a browser and pass its path instead."
        )
    return target


def load_original_state_dict(path: Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The `net.`-less LSeg state dict of a Lightning checkpoint (or of a bare state dict), in float32.

    By default the file is unpickled with `weights_only=True`, which runs no code from it; `trust_checkpoint=True`
    lifts that for files from a trusted source whose extra Lightning entries need it.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as error:  # a damaged file fails anywhere in the unpickler, with any exception type
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsupported:
            raise LSegConversionError(
                f"{path} holds Python objects beyond tensors ({unsupported.group(1)}), which safe loading refuses. "
                f"If you trust the file, convert it with --trust-checkpoint."
            ) from error
        raise LSegConversionError(f"{path} is truncated or not a PyTorch checkpoint: {error!r}") from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise LSegConversionError(
            f"{path} is not an LSeg checkpoint: expected a Lightning checkpoint with a 'state_dict' of tensors, got "
            f"{type(checkpoint).__name__} with keys {list(checkpoint)[:8] if isinstance(checkpoint, dict) else []}."
        )
    state_dict = {key.removeprefix("net."): tensor for key, tensor in state_dict.items()}
    if "pretrained.layer1.0.weight" in state_dict:
        raise LSegConversionError(
            f"{path} is an LSeg checkpoint with the ResNet-101 image encoder (clip_resnet101: the pascal_fold*, "
            f"coco_fold* and fss_rn101 releases); only the ViT-L/16 (DPT) image encoder is supported."
        )
    expected = ("pretrained.model.cls_token", "scratch.head1.weight", "clip_pretrained.token_embedding.weight")
    if not all(key in state_dict for key in expected):
        raise LSegConversionError(
            f"{path} is not an LSeg checkpoint: it lacks {[key for key in expected if key not in state_dict]} "
            f"(under an optional 'net.' prefix); its first keys are {list(state_dict)[:8]}."
        )
    return {key: tensor if not tensor.is_floating_point() else tensor.float() for key, tensor in state_dict.items()}


def infer_config(
    state_dict: dict[str, torch.Tensor],
    vit_heads: int | None = None,
    text_heads: int | None = None,
    arch_option: int | None = None,
    block_depth: int | None = None,
    activation: str | None = None,
) -> LSegConfig:
    """The [`LSegConfig`] of an original state dict, read from its shapes.

    Attention heads are not stored: unless given, they follow the released models' 64 channels per head (timm
    ViT-L/16 and OpenAI CLIP). The hooks sit at the ends of the four quarters of the ViT. The spatial
    regularisation block's variant, depth and activation are not stored either: a checkpoint that has one needs
    `arch_option`, `block_depth` and `activation`. Pass a config to `convert_lseg_checkpoint` for anything else.
    """

    def count(pattern: str) -> int:
        return len({match.group(1) for key in state_dict if (match := re.fullmatch(pattern, key))})

    has_block = "scratch.head_block.depthwise.depthwise.weight" in state_dict
    # arch_option 0 on such a checkpoint is the official zero-shot network, which loads it without the block.
    if has_block and arch_option != 0 and (arch_option not in (1, 2) or block_depth is None or activation is None):
        raise LSegConversionError(
            "The checkpoint has a spatial regularisation block (scratch.head_block), whose settings are not stored in "
            "it: pass arch_option 1 (bottleneck) or 2 (depthwise), block_depth and activation, as trained, or "
            "arch_option 0 to drop the block as the official zero-shot network does."
        )
    if not has_block and arch_option:
        raise LSegConversionError(
            f"arch_option={arch_option} needs a spatial regularisation block, but the checkpoint has no "
            f"scratch.head_block keys."
        )
    vit_width = state_dict["pretrained.model.cls_token"].shape[-1]
    vit_depth = count(r"pretrained\.model\.blocks\.(\d+)\..+")
    patch_size = state_dict["pretrained.model.patch_embed.proj.weight"].shape[-1]
    grid = round((state_dict["pretrained.model.pos_embed"].shape[1] - 1) ** 0.5)
    factors = []
    for stage in range(1, 5):
        resize = state_dict.get(f"pretrained.act_postprocess{stage}.4.weight")
        # A transposed convolution upsamples by its kernel size; LSeg's only convolution is a 3x3 with stride 2.
        factors.append(1 if resize is None else 0.5 if resize.shape[-1] == 3 else resize.shape[-1])
    dpt_config = {
        "hidden_size": vit_width,
        "num_hidden_layers": vit_depth,
        "num_attention_heads": vit_heads or max(vit_width // 64, 1),
        "intermediate_size": state_dict["pretrained.model.blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "backbone_out_indices": [vit_depth // 4 - 1, vit_depth // 2 - 1, 3 * vit_depth // 4 - 1, vit_depth - 1],
        "reassemble_factors": factors,
        "neck_hidden_sizes": [state_dict[f"pretrained.act_postprocess{k}.3.weight"].shape[0] for k in range(1, 5)],
        "fusion_hidden_size": state_dict["scratch.layer1_rn.weight"].shape[0],
    }
    token_embedding = state_dict["clip_pretrained.token_embedding.weight"]
    text_width = token_embedding.shape[1]
    text_config = {
        "vocab_size": token_embedding.shape[0],
        "hidden_size": text_width,
        "intermediate_size": state_dict["clip_pretrained.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": count(r"clip_pretrained\.transformer\.resblocks\.(\d+)\..+"),
        "num_attention_heads": text_heads or max(text_width // 64, 1),
        "max_position_embeddings": state_dict["clip_pretrained.positional_embedding"].shape[0],
    }
    clip_config = {
        "text_config": text_config,
        "projection_dim": state_dict["clip_pretrained.text_projection"].shape[1],
    }
    if "clip_pretrained.visual.conv1.weight" in state_dict:
        # Not part of the port, but the nested CLIPConfig should describe the CLIP the checkpoint came with.
        conv = state_dict["clip_pretrained.visual.conv1.weight"]
        positions = state_dict["clip_pretrained.visual.positional_embedding"].shape[0]
        clip_config["vision_config"] = {
            "hidden_size": conv.shape[0],
            "patch_size": conv.shape[-1],
            "image_size": round((positions - 1) ** 0.5) * conv.shape[-1],
            "num_hidden_layers": count(r"clip_pretrained\.visual\.transformer\.resblocks\.(\d+)\..+"),
            "num_attention_heads": max(conv.shape[0] // 64, 1),
            "intermediate_size": state_dict["clip_pretrained.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        }
    head = {"arch_option": arch_option or 0}
    if block_depth is not None:
        head["block_depth"] = block_depth
    if activation is not None:
        head["activation"] = activation
    return LSegConfig(dpt_config=dpt_config, clip_config=clip_config, **head)


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original state dict to [`LSegForSemanticSegmentation`]'s keys.

    Raises [`LSegConversionError`] naming every key that no rule maps and that is not deliberately dropped.
    """
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        if DROPPED_KEYS.fullmatch(key):
            continue
        matches = ((match, template) for pattern, template in KEY_RULES if (match := pattern.fullmatch(key)))
        if key.startswith(CLIP_PREFIX):
            mapped = map_openai_clip_key(key[len(CLIP_PREFIX) :], tensor)
            if mapped is None:
                unknown.append(key)
            else:
                converted.update({f"lseg.text_encoder.{name}": value for name, value in mapped.items()})
            continue
        rename = next((_rename(match, template) for match, template in matches), None)
        if rename is None:
            unknown.append(key)
        elif ".QKV." in rename:
            converted.update(_split_qkv(rename, tensor))
        else:
            converted[rename] = tensor
    if unknown:
        raise LSegConversionError(f"The checkpoint has {len(unknown)} keys that LSeg does not have: {unknown[:20]}")
    return converted


def _rename(match: re.Match, template: str) -> str:
    name = match.expand(template)
    if "{" in name:
        index = int(match.group(1))
        name = name.format(stage=index - 1, fusion=4 - index)
    return name


def _split_qkv(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """One fused q/k/v projection (stacked along dim 0 in that order) -> three transformers projections."""
    fused = next(name for name in _QKV_NAMES if name in key)
    return {
        key.replace(fused, fused.replace("QKV", name)): chunk.contiguous()
        for name, chunk in zip(_QKV_NAMES[fused], tensor.chunk(3, dim=0))
    }


def convert_lseg_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    config: LSegConfig | None = None,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    **infer_kwargs,
) -> Path:
    """Convert `checkpoint` (path, URL or released name) and save it, with its code, to `output_dir`; returns it.

    The config is inferred from the checkpoint (see [`infer_config`], which takes `infer_kwargs`) unless given. The
    folder appears complete or not at all: it is written beside its final place and renamed.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise LSegConversionError(f"{output_dir} already exists; choose another --output or pass --overwrite.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lseg-download-") as download_dir:
        state_dict = load_original_state_dict(resolve_checkpoint(checkpoint, Path(download_dir)), trust_checkpoint)
    if config is None:
        config = infer_config(state_dict, **infer_kwargs)
    converted = convert_state_dict(state_dict)
    if not config.arch_option:
        converted = {key: value for key, value in converted.items() if not key.startswith("spatial_regularization.")}
    with init.no_init_weights():
        model = LSegForSemanticSegmentation(config)
    try:
        load_state_dict_strictly(model, converted, "The checkpoint does not fit the LSeg config")
    except ValueError as error:
        raise LSegConversionError(f"{error}. Pass the right config if the inferred one is wrong.") from error
    model.eval()

    write_folder_atomic(output_dir, model.save_pretrained)
    return output_dir
