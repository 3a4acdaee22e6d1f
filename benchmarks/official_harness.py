"""Build the official CAT-Seg and LSeg from a scratch checkout, with random weights, to run beside ours.

The official code is never part of this repository. It lives in a folder outside it (``--official-root`` or the
``OVSEG_OFFICIAL_ROOT`` environment variable) laid out as::

    ROOT/CAT-Seg/             git archive of cvlab-kaist/CAT-Seg @ 6d3a188 (the package cat_seg/)
    ROOT/lang-seg/modules/    isl-org/lang-seg @ bb00b21, modules/ (models/lseg_net.py, ...)
    ROOT/site/                pip --target --no-deps: einops, ftfy, wcwidth, openai-clip (pure Python)
    ROOT/site-timm-catseg/    pip --target --no-deps: timm 1.0 (CAT-Seg imports timm.layers)
    ROOT/site-timm-lseg/      pip --target --no-deps: timm 0.4.12 (LSeg's ViT-L/16 code path)

For example, with the two repositories' git directories at hand (a full lang-seg archive may stop at a large asset
outside modules/; naming the folder avoids it)::

    git --git-dir=CAT-Seg.git archive 6d3a188 | tar -x -C ROOT/CAT-Seg
    git --git-dir=lang-seg.git archive bb00b21 modules | tar -x -C ROOT/lang-seg
    python -m pip install --no-deps --target ROOT/site einops ftfy wcwidth openai-clip
    python -m pip install --no-deps --target ROOT/site-timm-catseg 'timm>=1.0,<1.1'
    python -m pip install --no-deps --target ROOT/site-timm-lseg timm==0.4.12

`--no-deps` matters: timm's dependencies include torch and torchvision, and a second torch or a real torchvision in
a folder that this module puts first on `sys.path` would shadow the running torch or the torchvision stand-in.

The two timm versions cannot share a module name, so each official model is imported and built while its timm is
the one in ``sys.modules``; the official modules keep references to the objects they imported.

The official code imports a few pieces of detectron2, fvcore, open_clip, torchvision and pkg_resources, none of
which is installable here. This module provides stand-ins that follow those libraries' documented contracts for
the parts the model code calls (``configurable``, ``ImageList.from_tensors``, ``sem_seg_postprocess``); the rest are
import-only placeholders that fail if called. Downloads are replaced: CAT-Seg's ``clip.load`` builds an
OpenAI-format CLIP state dict of the right shapes and passes it through the official ``model_vpt.build_model``
(which splits q/k/v and converts to fp16, as for the released weights); LSeg's ``clip.load`` returns the official
``clip.model.CLIP`` at ViT-B/32 dims, and its ``timm.create_model`` is called with ``pretrained=False``. All
parameters are then overwritten with seeded random values (`randomize_`), and ours is built from the official
state dict by our converters, so both run the same weights.

Official forwards must run inside `official_patches()`: the official code calls ``Tensor.cuda()`` unconditionally
and LSeg multiplies ``image_features.half() @ text_features.t()``, which needs CUDA; both become identities there
(the fp32 reference, as the parity fixtures).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OFFICIAL_ROOT_ENV = "OVSEG_OFFICIAL_ROOT"
LAYOUT = {
    "CAT-Seg/cat_seg/cat_seg_model.py": "git archive of cvlab-kaist/CAT-Seg",
    "lang-seg/modules/models/lseg_net.py": "isl-org/lang-seg's modules/ folder",
    "site/einops": "pip install --no-deps --target ROOT/site einops ftfy wcwidth openai-clip",
    "site/clip/model.py": "pip install --no-deps --target ROOT/site openai-clip",
    "site-timm-catseg/timm/layers": "pip install --no-deps --target ROOT/site-timm-catseg 'timm>=1.0,<1.1'",
    "site-timm-lseg/timm/models/vision_transformer.py": (
        "pip install --no-deps --target ROOT/site-timm-lseg timm==0.4.12"
    ),
}

# CAT-Seg's defaults for ViT-B/16 (configs/vitb_384.yaml); evaluation uses class pooling 1 (eval.sh).
CATSEG_B16 = dict(
    clip_pretrained="ViT-B/16",
    prompt_ensemble_type="single",
    text_guidance_dim=512,
    text_guidance_proj_dim=128,
    appearance_guidance_dim=512,
    appearance_guidance_proj_dim=128,
    prompt_depth=0,
    prompt_length=0,
    decoder_dims=[64, 32],
    decoder_guidance_dims=[256, 128],
    decoder_guidance_proj_dims=[32, 16],
    num_heads=4,
    num_layers=2,
    hidden_dims=128,
    pooling_sizes=[2, 2],
    feature_resolution=[24, 24],
    window_sizes=12,
    attention_type="linear",
)
# OpenAI CLIP dims: embed, image resolution, vision layers, width, patch, context, vocab, text width, heads, layers.
OPENAI_CLIP_DIMS = {
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.323163)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class OfficialCodeError(RuntimeError):
    """The official-code folder is missing, incomplete or does not import."""


def resolve_official_root(root: str | os.PathLike | None) -> Path | None:
    """The official-code folder from the argument or ``$OVSEG_OFFICIAL_ROOT``; None when neither names one.

    A folder that is named but lacks a piece raises `OfficialCodeError` saying which piece and how to add it.
    """
    source = "--official-root"
    if not root and os.environ.get(OFFICIAL_ROOT_ENV):
        root, source = os.environ[OFFICIAL_ROOT_ENV], f"${OFFICIAL_ROOT_ENV}"
    if not root:
        return None
    root = Path(root).expanduser()
    if not root.is_dir():
        raise OfficialCodeError(f"{source} {root} is not a folder (benchmarks/official_harness.py says what it holds)")
    for relative, how in LAYOUT.items():
        if not (root / relative).exists():
            raise OfficialCodeError(f"{source} {root} lacks {relative} ({how})")
    return root


# ----------------------------------------------------------------------------------------------------------------
# detectron2 stand-ins (the contract of detectron2.structures.ImageList and detectron2.modeling.postprocessing)


def configurable(init):
    """detectron2's ``@configurable`` lets ``__init__`` take a cfg; the harness always passes keyword arguments."""
    return init


class ImageList:
    """Images of different sizes padded into one tensor, with each image's original ``(height, width)``."""

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, index: int) -> torch.Tensor:
        height, width = self.image_sizes[index]
        return self.tensor[index, ..., :height, :width]

    @staticmethod
    def from_tensors(tensors: list[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0) -> "ImageList":
        """Pad ``(C, H, W)`` tensors at the bottom and right to the largest size, rounded up to a multiple of
        ``size_divisibility`` (when above 1), and stack them."""
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        height = max(size[0] for size in image_sizes)
        width = max(size[1] for size in image_sizes)
        if size_divisibility > 1:
            height = math.ceil(height / size_divisibility) * size_divisibility
            width = math.ceil(width / size_divisibility) * size_divisibility
        batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], height, width), pad_value)
        for padded, tensor in zip(batch, tensors):
            padded[..., : tensor.shape[-2], : tensor.shape[-1]].copy_(tensor)
        return ImageList(batch.contiguous(), image_sizes)


def sem_seg_postprocess(result: torch.Tensor, img_size, output_height: int, output_width: int) -> torch.Tensor:
    """``(K, H, W)`` scores of a padded input -> crop to the unpadded ``img_size``, then bilinear to the output."""
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


class _Registry:
    """detectron2's registries: ``@REGISTRY.register()`` only records the class here."""

    def register(self, obj=None):
        return (lambda cls: cls) if obj is None else obj


class _PlaceholderType(type):
    """Placeholders answer any attribute with another placeholder (``InterpolationMode.NEAREST``, ...)."""

    def __getattr__(cls, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        placeholder = _PlaceholderType(attr, (_Placeholder,), {"__qualname__": f"{cls.__qualname__}.{attr}"})
        setattr(cls, attr, placeholder)
        return placeholder


class _Placeholder(metaclass=_PlaceholderType):
    def __init__(self, *args, **kwargs):
        raise OfficialCodeError(f"{type(self).__module__}.{type(self).__qualname__} is an import-only stand-in")


def _import_only(name: str) -> types.ModuleType:
    """A module whose every attribute is a placeholder that fails when used (imported but never called)."""
    module = types.ModuleType(name)
    module.__path__ = []
    module.__stand_in__ = True

    def attribute(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        placeholder = _PlaceholderType(attr, (_Placeholder,), {"__module__": name, "__qualname__": attr})
        setattr(module, attr, placeholder)
        return placeholder

    module.__getattr__ = attribute
    return module


STAND_IN_PACKAGES = ("detectron2", "fvcore", "open_clip", "torchvision", "pandas", "pkg_resources")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    """The modules whose contents the official code uses; every other name is import-only."""
    modules = {
        name: _import_only(name)
        for name in [
            "detectron2.config",
            "detectron2.modeling",
            "detectron2.modeling.backbone",
            "detectron2.modeling.postprocessing",
            "detectron2.structures",
            "detectron2.utils.memory",
            "pkg_resources",
        ]
    }
    modules["detectron2.config"].configurable = configurable
    modules["detectron2.structures"].ImageList = ImageList
    modules["detectron2.modeling.postprocessing"].sem_seg_postprocess = sem_seg_postprocess
    modules["detectron2.modeling"].META_ARCH_REGISTRY = _Registry()
    modules["detectron2.modeling"].SEM_SEG_HEADS_REGISTRY = _Registry()
    modules["detectron2.modeling.backbone"].Backbone = nn.Module
    modules["detectron2.utils.memory"]._ignore_torch_cuda_oom = contextlib.nullcontext
    import packaging.version  # openai-clip compares the torch version through pkg_resources.packaging

    modules["pkg_resources"].packaging = packaging
    return modules


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the stand-in packages and any of their submodules (``torchvision.ops.misc``, ...)."""

    def __init__(self, packages: tuple[str, ...]):
        self.packages = packages
        self.modules = _stand_in_modules()

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.packages:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return self.modules.get(spec.name) or _import_only(spec.name)

    def exec_module(self, module):
        pass


def install_stand_ins() -> None:
    """Serve the stand-ins for the libraries that are not really installed (idempotent)."""
    if any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
        return
    missing = tuple(name for name in STAND_IN_PACKAGES if importlib.util.find_spec(name) is None)
    sys.meta_path.append(_StandInFinder(missing))


@contextlib.contextmanager
def _timm_from(site: Path):
    """Import timm from ``site`` for the duration (the two official models need different timm versions)."""
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "timm" or name.startswith("timm.")}
    sys.path.insert(0, str(site))
    try:
        yield
    finally:
        sys.path.remove(str(site))
        for name in [name for name in sys.modules if name == "timm" or name.startswith("timm.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def _package(name: str, path: Path) -> None:
    """Register ``path`` as package ``name`` without running its ``__init__`` (which imports datasets, Swin...)."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def _prepare(root: Path) -> None:
    install_stand_ins()
    if str(root / "site") not in sys.path:
        sys.path.append(str(root / "site"))


@contextlib.contextmanager
def official_patches():
    """``Tensor.cuda`` and ``Tensor.half`` as identities while an official forward runs on CPU in fp32."""
    cuda, half = torch.Tensor.cuda, torch.Tensor.half
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.half = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.half = cuda, half


# ----------------------------------------------------------------------------------------------------------------
# Random weights


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with seeded values at unit gain, so no weight stays at a default or zero.

    Norm scales 1 + 0.1 N and shifts 0.02 N; other vectors 0.02 N; matrices and convolutions N / sqrt(fan_in);
    scalars (CLIP's logit scale) are kept.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
    norm_parameters = {
        id(p): name for m in module.modules() if isinstance(m, norms) for name, p in m.named_parameters(recurse=False)
    }
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim == 0:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if norm_parameters.get(id(parameter)) == "weight":
                value = 1 + 0.1 * noise
            elif parameter.ndim == 1:
                value = 0.02 * noise
            else:
                fan_in = parameter[0].numel() if parameter.ndim == 4 else parameter.shape[-1]
                value = noise / math.sqrt(fan_in)
            parameter.copy_(value.to(parameter.dtype))
    return module


# ----------------------------------------------------------------------------------------------------------------
# CAT-Seg


def _openai_format_state_dict(model_vpt, name: str) -> dict[str, torch.Tensor]:
    """An OpenAI-format CLIP state dict (fused ``attn.in_proj_weight``) of the released model's shapes."""
    embed, resolution, v_layers, v_width, patch, context, vocab, t_width, t_heads, t_layers = OPENAI_CLIP_DIMS[name]
    shapes = model_vpt.CLIP(embed, resolution, v_layers, v_width, patch, context, vocab, t_width, t_heads, t_layers)
    state_dict = {}
    for key, tensor in shapes.state_dict().items():
        if key.endswith("attn.q_proj_weight"):
            prefix = key[: -len("q_proj_weight")]
            parts = [shapes.state_dict()[prefix + f"{p}_proj_weight"] for p in "qkv"]
            state_dict[prefix + "in_proj_weight"] = torch.zeros(torch.cat(parts).shape)
        elif not key.endswith(("attn.k_proj_weight", "attn.v_proj_weight")):
            state_dict[key] = torch.zeros_like(tensor)
    state_dict.update(
        input_resolution=torch.tensor(resolution), context_length=torch.tensor(context), vocab_size=torch.tensor(vocab)
    )
    return state_dict


def import_official_catseg(root: Path) -> types.SimpleNamespace:
    """The official CAT-Seg classes (``CATSeg``, ``CATSegHead``, ``CATSegPredictor``) and CLIP modules."""
    _prepare(root)
    package = root / "CAT-Seg" / "cat_seg"
    with _timm_from(root / "site-timm-catseg"):
        _package("cat_seg", package)
        _package("cat_seg.modeling", package / "modeling")
        model_vpt = importlib.import_module("cat_seg.third_party.model_vpt")
        clip = importlib.import_module("cat_seg.third_party.clip")

        def load(name, device="cpu", jit=False, prompt_depth=0, prompt_length=0):
            return model_vpt.build_model(_openai_format_state_dict(model_vpt, name), prompt_depth, prompt_length), None

        clip.load = load  # the official one downloads the released weights
        return types.SimpleNamespace(
            CATSeg=importlib.import_module("cat_seg.cat_seg_model").CATSeg,
            CATSegHead=importlib.import_module("cat_seg.modeling.heads.cat_seg_head").CATSegHead,
            CATSegPredictor=importlib.import_module("cat_seg.modeling.transformer.cat_seg_predictor").CATSegPredictor,
            clip=clip,
        )


def build_official_catseg(
    root: Path, class_names: list[str], *, pooling: int = 1, seed: int = 0, sliding_window: bool = False
) -> nn.Module:
    """The official CAT-Seg ViT-B/16 at 384 (configs/vitb_384.yaml), random weights, in eval mode.

    ``pooling`` is the class-aggregation pooling (1 as eval.sh evaluates, 2 as training). The class list is set
    after construction (equivalent to TEST_CLASS_JSON; the constructor's fp16 class embeddings are never used).
    """
    official = import_official_catseg(root)
    with tempfile.TemporaryDirectory() as folder, official_patches():
        classes = Path(folder) / "classes.json"
        classes.write_text(json.dumps(["object"]))  # the constructor encodes these in fp16: keep it to one
        with _timm_from(root / "site-timm-catseg"):
            predictor = official.CATSegPredictor(
                train_class_json=str(classes),
                test_class_json=str(classes),
                **{**CATSEG_B16, "pooling_sizes": [pooling, pooling]},
            )
        head = official.CATSegHead(
            num_classes=len(class_names),
            ignore_value=255,
            feature_resolution=[24, 24],
            transformer_predictor=predictor,
        )
        model = official.CATSeg(
            backbone=None,
            sem_seg_head=head,
            size_divisibility=32,
            pixel_mean=PIXEL_MEAN,
            pixel_std=PIXEL_STD,
            clip_pixel_mean=CLIP_PIXEL_MEAN,
            clip_pixel_std=CLIP_PIXEL_STD,
            train_class_json=str(classes),
            test_class_json=str(classes),
            sliding_window=sliding_window,
            clip_finetune="attention",
            backbone_multiplier=0.0,
            clip_pretrained="ViT-B/16",
        )
    randomize_(model, seed)
    set_official_catseg_classes(model, class_names)
    return model.eval()


def set_official_catseg_classes(model: nn.Module, class_names: list[str]) -> None:
    """Switch the vocabulary (train and test) and drop the official text cache."""
    predictor = model.sem_seg_head.predictor
    predictor.class_texts = predictor.test_class_texts = list(class_names)
    predictor.cache = predictor.tokens = None


def set_official_catseg_pooling(model: nn.Module, pooling: int) -> None:
    """The class-aggregation pooling (weightless AvgPool2d), as building with POOLING_SIZES [pooling, pooling]."""
    for layer in model.sem_seg_head.predictor.transformer.layers:
        layer.attention.pool = nn.AvgPool2d(pooling)


# ----------------------------------------------------------------------------------------------------------------
# LSeg


def import_official_lseg(root: Path) -> types.SimpleNamespace:
    """The official ``LSegNet`` (modules/models/lseg_net.py) with downloads replaced."""
    _prepare(root)
    with _timm_from(root / "site-timm-lseg"):
        timm = importlib.import_module("timm")
        openai_clip = importlib.import_module("clip")
        _package("lang_seg_modules", root / "lang-seg" / "modules")
        lseg_net = importlib.import_module("lang_seg_modules.models.lseg_net")
        lseg_vit = importlib.import_module("lang_seg_modules.models.lseg_vit")
    return types.SimpleNamespace(LSegNet=lseg_net.LSegNet, lseg_vit=lseg_vit, timm=timm, clip=openai_clip)


def build_official_lseg(root: Path, labels: list[str], *, seed: int = 0) -> nn.Module:
    """The official ``LSegNet(backbone="clip_vitl16_384", features=256, arch_option=0)`` with random weights, eval.

    Built as ``LSegModule`` builds it (crop size 480, ``patch_embed.img_size`` set to it). Its CLIP is the official
    ``clip.model.CLIP`` at ViT-B/32 dims in fp32; its ViT is timm 0.4.12's ``vit_large_patch16_384``.
    """
    official = import_official_lseg(root)
    dims = OPENAI_CLIP_DIMS["ViT-B/32"]
    create_model, load = official.timm.create_model, official.clip.load
    official.timm.create_model = lambda name, pretrained=False, **kwargs: create_model(
        name, pretrained=False, **kwargs
    )
    official.clip.load = lambda name, device="cpu", jit=False: (official.clip.model.CLIP(*dims), None)
    try:
        with _timm_from(root / "site-timm-lseg"), official_patches():
            net = official.LSegNet(
                labels=list(labels),
                backbone="clip_vitl16_384",
                features=256,
                crop_size=480,
                arch_option=0,
                block_depth=0,
                activation="lrelu",
            )
    finally:
        official.timm.create_model, official.clip.load = create_model, load
    net.pretrained.model.patch_embed.img_size = (480, 480)
    randomize_(net, seed)
    return net.eval()


@contextlib.contextmanager
def official_lseg_warm_text(net: nn.Module):
    """Official forwards (patched, no grad) with the label set's text features computed ahead: the official
    ``LSeg.forward`` encodes its labels in every call, this measures it with warm text as ours."""
    with torch.no_grad(), official_patches():
        features = net.clip_pretrained.encode_text(net.text)
        net.clip_pretrained.encode_text = lambda text: features
        try:
            yield
        finally:
            del net.clip_pretrained.encode_text
