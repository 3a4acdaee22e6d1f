"""PyTorch CAT-Seg: cost aggregation over CLIP for open-vocabulary semantic segmentation (Cho et al., CVPR 2024).

The data flow, top-down in this file: dense CLIP image features and text features -> cosine `cost_volume` ->
`spatial_aggregation` (Swin blocks guided by the image features) and `class_aggregation` (linear attention over
classes guided by the text features), repeated -> `upsampling_decoder` guided by intermediate CLIP layers ->
per-class logits at 4x the CLIP patch grid.

Each stage's module is written in the paper's form. Beside it, as its own function, sits an exact reformulation
that computes once per image what every class shares, and works in cache-sized chunks of classes or positions
([`chunked`], the one place that chunks): [`shared_guidance_spatial_aggregation`],
[`closed_form_padding_class_aggregation`] and [`folded_upsampling_decoder`]. Each module calls its own while its
`fast_path` attribute is set (the default; a runtime choice, not saved: see
[`CatSegPreTrainedModel.set_execution_options`]); tests check that both forms agree. In CPU inference the fast paths
also take oneDNN's fused linear kernels ([`linear_activation`]) and run their chunks on single-threaded workers
([`map_chunks_in_threads`]). Under `torch.compile` and `torch.export` neither is used, so the whole model is one
graph for any vocabulary size up to `config.max_classes` (tests/modeling/test_compile.py).

The vision-language backbone (CLIP, SigLIP, ...) is reached only through the interface of `backbones_catseg.py`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import eager_attention_forward
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .backbones_catseg import CatSegBackbone, backbone_class, linear_activation
from .configuration_catseg import FINETUNE_POLICIES, CatSegConfig


@dataclass
class CatSegModelOutput(ModelOutput):
    r"""
    Output of [`CatSegModel`]: the aggregated cost volume and what it was computed from.

    Args:
        aggregated_features (`torch.FloatTensor` of shape `(batch_size, hidden_dim, num_kept_classes, grid, grid)`):
            The cost volume after spatial and class aggregation. `num_kept_classes` is `min(num_classes,
            config.max_classes)`; `grid` is the CLIP patch grid (24 for the released models).
        guidance_features (`tuple(torch.FloatTensor)`, each of shape `(batch_size, vision_hidden_size, grid, grid)`):
            Raw outputs of the CLIP vision blocks `config.guidance_layers` (patch tokens only), which guide the
            upsampling decoder.
        dense_image_features (`torch.FloatTensor` of shape `(batch_size, projection_dim, grid, grid)`):
            Dense CLIP image features from the value path of the last vision block, in CLIP's joint space.
        text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)` or `(batch_size, num_classes,
        projection_dim)`):
            L2-normalised text features of the vocabulary.
        cost_volume (`torch.FloatTensor` of shape `(batch_size, num_classes, grid, grid)`):
            Cosine similarity between every class and every patch, for the whole vocabulary.
        selected_classes (`torch.LongTensor` of shape `(batch_size, kept_classes)`, *optional*):
            When the vocabulary is larger than `config.max_classes` (or `config.top_k_classes`), the (sorted)
            indices of the classes kept for each image; `None` otherwise.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The CLIP vision tower's hidden states, each `(batch_size, 1 + grid * grid, vision_hidden_size)`: the
            embeddings, then the output of every vision block (the last one being its dense value path).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention probabilities `(batch_size, num_heads, tokens, tokens)` of every CLIP vision block but the
            last, which attends to nothing (eager attention only).
    """

    aggregated_features: torch.FloatTensor | None = None
    guidance_features: tuple[torch.FloatTensor, ...] | None = None
    dense_image_features: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cost_volume: torch.FloatTensor | None = None
    selected_classes: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CatSegSemanticSegmenterOutput(ModelOutput):
    r"""
    Output of [`CatSegForSemanticSegmentation`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The official loss: binary cross-entropy between the logits, bilinearly resized to the label size, and
            one-hot targets; ignored pixels stay in the mean with all-zero targets.
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes, 4 * grid, 4 * grid)`):
            Per-class logits (96x96 for the released models). Classes cut by `config.max_classes` hold
            `config.dropped_class_logit`. Apply a sigmoid, not a softmax, for per-class probabilities.
        dense_image_features (`torch.FloatTensor` of shape `(batch_size, projection_dim, grid, grid)`, *optional*):
            Returned with `output_hidden_states=True`: dense CLIP image features.
        cost_volume (`torch.FloatTensor` of shape `(batch_size, num_classes, grid, grid)`, *optional*):
            Returned with `output_hidden_states=True`: the cosine cost volume.
        aggregated_features (`torch.FloatTensor` of shape `(batch_size, hidden_dim, num_kept_classes, grid, grid)`,
        *optional*):
            Returned with `output_hidden_states=True`: the cost volume after aggregation.
        text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
            Returned with `output_hidden_states=True`: the normalised text features used.
        selected_classes (`torch.LongTensor` of shape `(batch_size, kept_classes)`, *optional*):
            Returned with `output_hidden_states=True` when the vocabulary exceeded `config.max_classes` (or
            `config.top_k_classes`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The CLIP vision tower's hidden states; see [`CatSegModelOutput`].
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The CLIP vision blocks' attention probabilities; see [`CatSegModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    dense_image_features: torch.FloatTensor | None = None
    cost_volume: torch.FloatTensor | None = None
    aggregated_features: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    selected_classes: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class FastPathModule(nn.Module):
    """A stage with an exact fast path beside its paper form. `fast_path` and `cost_map_chunk_size` are runtime
    attributes (set them on the model with [`CatSegPreTrainedModel.set_execution_options`]), never saved.

    `cost_map_chunk_size`: how many (image, class) cost maps the fast path processes together. It bounds peak memory
    for large vocabularies and batches (sliding windows) and does not change the result. `None` picks by device: 8 on
    CPU, where chunks that stay in the cache run fastest, and 256 elsewhere.
    """

    fast_path: bool = True
    cost_map_chunk_size: int | None = None

    def cost_maps_per_chunk(self, device: torch.device) -> int:
        if self.cost_map_chunk_size is not None:
            return self.cost_map_chunk_size
        return 8 if device.type == "cpu" else 256


def chunked(function, tensor: torch.Tensor, dim: int, module: FastPathModule, maps_per_slice: float) -> torch.Tensor:
    """`function(tensor)` computed on chunks along `dim` and concatenated, to bound peak memory.

    A chunk holds about `module.cost_maps_per_chunk` (image, class) cost maps' worth of data, `maps_per_slice` being
    what one slice along `dim` holds. Only for functions that treat the slices along `dim` independently, so the result
    does not depend on the chunking. Under `torch.compile` / `torch.export` it is one call: a traced graph would
    otherwise hold one copy per chunk, and the chunk count would tie the graph to the number of classes. In CPU
    inference the chunks are spread over the intra-op threads ([`map_chunks_in_threads`]).
    """
    if torch.compiler.is_compiling():
        return function(tensor)
    chunk_size = max(1, int(module.cost_maps_per_chunk(tensor.device) / maps_per_slice))
    if chunk_size >= tensor.shape[dim]:
        return function(tensor)
    threads = torch.get_num_threads()
    if (
        tensor.device.type == "cpu"
        and threads > 1
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    ):
        # As many chunks for every thread (20 slices in chunks of 8 would leave one thread idle for the third).
        count = -(-tensor.shape[dim] // chunk_size)
        count = -(-count // threads) * threads
        chunk_size = max(1, -(-tensor.shape[dim] // count))
        return map_chunks_in_threads(function, tensor.split(chunk_size, dim=dim), dim)
    return torch.cat([function(chunk) for chunk in tensor.split(chunk_size, dim=dim)], dim=dim)


def map_chunks_in_threads(function, chunks: tuple[torch.Tensor, ...], dim: int) -> torch.Tensor:
    """`torch.cat([function(chunk) for chunk in chunks], dim)` with the chunks shared among as many single-threaded
    workers as the calling thread has intra-op threads; `function` keeps the length of `dim`.

    The chunks are many small kernels each. Split across OpenMP threads, every kernel ends in a barrier, which
    stalls whenever one thread loses its core to another process: on a shared machine that made the model several
    times slower. Independent chunks on independent threads keep the cores busy without waiting for each other, and
    each worker copies its result into the output while it is still in cache. The workers are shared by every
    caller ([`single_threaded_workers`]), so concurrent calls (a server answering two requests) neither change a
    thread count nor multiply the threads. [`chunked`] uses it without autograd and autocast only; the grad mode and
    inference mode are per thread and are carried into the workers.
    """
    inference = torch.is_inference_mode_enabled()
    starts = [0]
    for chunk in chunks:
        starts.append(starts[-1] + chunk.shape[dim])
    output = None
    allocation = threading.Lock()

    def run(index: int) -> None:
        nonlocal output
        with torch.inference_mode() if inference else torch.no_grad():
            result = function(chunks[index])
            with allocation:
                if output is None:
                    output = result.new_empty((*result.shape[:dim], starts[-1], *result.shape[dim + 1 :]))
            output.narrow(dim, starts[index], chunks[index].shape[dim]).copy_(result)

    # list() waits for every chunk and raises the first error.
    list(single_threaded_workers(torch.get_num_threads()).map(run, range(len(chunks))))
    return output


_WORKER_POOLS: dict[int, ThreadPoolExecutor] = {}
_WORKER_POOLS_LOCK = threading.Lock()
# A forked child has none of its parent's threads: it starts its own pools.
os.register_at_fork(after_in_child=_WORKER_POOLS.clear)


def single_threaded_workers(count: int) -> ThreadPoolExecutor:
    """A process-wide pool of `count` threads, each running its ops on one intra-op thread.

    `torch.set_num_threads` sets the count of the calling thread only, but it also records the count that threads
    started later begin with. So every worker sets its own count once, all of them together when the pool is made,
    and the caller then records its own count again; no thread count changes after that, whatever runs meanwhile.
    """
    with _WORKER_POOLS_LOCK:
        pool = _WORKER_POOLS.get(count)
        if pool is None:
            started = threading.Barrier(count)

            def start() -> None:
                # A thread takes the recorded count at its first parallel op unless it has been through that
                # initialisation already (which `get_num_threads` runs), so the order matters.
                torch.get_num_threads()
                torch.set_num_threads(1)
                # Holding every worker until all have started makes the pool start `count` distinct threads now.
                started.wait()

            pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="catseg-chunks")
            list(pool.map(lambda _: start(), range(count)))
            torch.set_num_threads(count)
            _WORKER_POOLS[count] = pool
        return pool


def guidance_query_key(q_proj: nn.Linear, k_proj: nn.Linear, guidance: torch.Tensor) -> torch.Tensor:
    """The guidance half of query and key projections whose input is `cat([features, guidance], -1)`.

    A linear map of a concatenation is the sum of the maps of its parts. The guidance is shared by every class
    (spatial aggregation) or every position (class aggregation), so the fast paths compute this half once and add
    it to the feature half, instead of concatenating the guidance to every token.
    `(..., guidance_dim)` -> `(..., 2 * dim)`, queries first.
    """
    start = q_proj.in_features - guidance.shape[-1]
    return F.linear(guidance, torch.cat([q_proj.weight[:, start:], k_proj.weight[:, start:]]))


class CatSegMLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation_name = activation
        self.activation = ACT2FN[activation]
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


def fused_mlp(mlp: CatSegMLP, hidden_states: torch.Tensor) -> torch.Tensor:
    """[`CatSegMLP`] with the activation fused into the first layer ([`linear_activation`])."""
    hidden_states = linear_activation(hidden_states, mlp.fc1.weight, mlp.fc1.bias, mlp.activation_name)
    return linear_activation(hidden_states, mlp.fc2.weight, mlp.fc2.bias)


def window_partition(hidden_states: torch.Tensor, window_size: int) -> torch.Tensor:
    """`(batch, height, width, dim)` -> `(batch, windows, window_size**2, dim)`: non-overlapping windows in row-major
    order, tokens row-major inside each window."""
    batch, height, width, dim = hidden_states.shape
    windows = hidden_states.view(batch, height // window_size, window_size, width // window_size, window_size, dim)
    return windows.transpose(2, 3).reshape(batch, -1, window_size * window_size, dim)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of [`window_partition`]: `(batch, windows, window_size**2, dim)` -> `(batch, height, width, dim)`."""
    batch, dim = windows.shape[0], windows.shape[-1]
    grid = windows.view(batch, height // window_size, width // window_size, window_size, window_size, dim)
    return grid.transpose(2, 3).reshape(batch, height, width, dim)


class CatSegWindowAttention(nn.Module):
    """Multi-head attention inside Swin windows; queries and keys also see the appearance guidance, values do not."""

    def __init__(self, config: CatSegConfig, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.scaling = (dim // num_heads) ** -0.5
        # Read by the SDPA integration, which otherwise assumes causal attention.
        self.is_causal = False
        self.q_proj = nn.Linear(dim + guidance_dim, dim)
        self.k_proj = nn.Linear(dim + guidance_dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, hidden_states: torch.Tensor, guidance: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, windows, window_area, dim)`.
            guidance: `(batch, windows, window_area, guidance_dim)`, concatenated into the queries' and keys' input.
            attention_mask: additive `(windows, window_area, window_area)` shift mask, or `None`.
        Returns:
            `(batch, windows, window_area, dim)`.
        """
        guided = torch.cat([hidden_states, guidance], dim=-1)
        return self.attend(self.q_proj(guided), self.k_proj(guided), self.v_proj(hidden_states), attention_mask)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of projected `(batch, windows, window_area, dim)` queries, keys and values within each window,
        then the output projection."""
        return self.out_proj(self.attention_context(query, key, value, attention_mask))

    def attention_context(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """[`attend`] without the output projection: the heads' outputs `(batch, windows, window_area, dim)`."""
        batch, windows, area, dim = query.shape

        def split_heads(states: torch.Tensor) -> torch.Tensor:
            # Windows join the batch axis, so that the heads are a view of the projections and need no copy.
            return states.unflatten(-1, (self.num_heads, -1)).flatten(0, 1).transpose(1, 2)

        if attention_mask is not None:
            attention_mask = attention_mask.repeat(batch, 1, 1).unsqueeze(1)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        context, _ = attention(
            self,
            split_heads(query),
            split_heads(key),
            split_heads(value),
            attention_mask,
            scaling=self.scaling,
            dropout=0.0,
        )
        # (batch * windows, area, heads, head_dim) -> (batch, windows, area, dim)
        return context.reshape(batch, windows, area, dim)


def shared_guidance_window_attention(
    attention: CatSegWindowAttention,
    hidden_states: torch.Tensor,
    guided_query_key: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """[`CatSegWindowAttention`] of every class of an image, with the guidance half of the queries and keys computed
    once per image.

    Args:
        hidden_states: `(batch, classes, windows, window_area, dim)`.
        guided_query_key: `(batch, 1, windows, window_area, 2 * dim)` from [`guidance_query_key`].
        attention_mask: as for [`CatSegWindowAttention`].
    Returns:
        `(batch * classes, windows, window_area, dim)`.
    """
    dim = hidden_states.shape[-1]
    # One matmul projects the class features for q, k and v.
    weight = torch.cat([attention.q_proj.weight[:, :dim], attention.k_proj.weight[:, :dim], attention.v_proj.weight])
    bias = torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias])
    qkv = linear_activation(hidden_states, weight, bias)
    qkv[..., : 2 * dim] += guided_query_key
    query, key, value = qkv.flatten(0, 1).split(dim, dim=-1)
    context = attention.attention_context(query, key, value, attention_mask)
    # The output projection too through `linear_activation` (oneDNN in CPU inference; MKL's `addmm` behind
    # `nn.Linear` ran at a quarter of its rate at these shapes).
    return linear_activation(context, attention.out_proj.weight, attention.out_proj.bias)


class CatSegSwinBlock(nn.Module):
    """A Swin transformer block over the spatial axes of every class's cost map (no relative position bias)."""

    def __init__(self, config: CatSegConfig, shift: bool) -> None:
        super().__init__()
        dim, resolution = config.hidden_dim, config.feature_resolution
        # A grid no larger than one window is attended as a whole, unshifted, as in Swin.
        self.window_size = min(config.window_size, resolution)
        self.shift_size = self.window_size // 2 if shift and resolution > config.window_size else 0
        if resolution % self.window_size:
            raise ValueError(
                f"The CLIP grid {resolution}x{resolution} (image_size / patch_size) must be a multiple of "
                f"window_size={config.window_size}."
            )
        self.resolution = resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CatSegWindowAttention(config, dim, config.appearance_guidance_dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = CatSegMLP(dim, dim * config.mlp_ratio, "gelu")

    def shift_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        """`(windows, area, area)` additive mask, -100 between tokens that the shift brought from different regions,
        on the device and in the dtype of `like`: CPU SDPA silently misreads a float32 mask beside float64 queries."""
        if not self.shift_size:
            return None
        n, ws, shift = self.resolution, self.window_size, self.shift_size
        region = torch.zeros(1, n, n, 1, device=like.device)
        bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
        for label, (rows, cols) in enumerate((rows, cols) for rows in bounds for cols in bounds):
            region[:, rows, cols] = label
        # The regions are laid out on the shifted grid, which the (unshifted) window partition cuts.
        region = window_partition(region, ws)[0, ..., 0]
        return (region[:, None, :] != region[:, :, None]).to(like.dtype) * -100.0

    def forward(self, hidden_states: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, classes, grid, grid, hidden_dim)`.
            guidance: `(batch, grid, grid, guidance_dim)`, layer-normalised; the same for every class.
        Returns:
            `(batch, classes, grid, grid, hidden_dim)`.
        """
        batch, classes, height, width, dim = hidden_states.shape
        shift, window = self.shift_size, self.window_size
        states = self.norm1(hidden_states).flatten(0, 1)
        guidance = guidance.repeat_interleave(classes, dim=0)
        if shift:
            states = torch.roll(states, (-shift, -shift), dims=(1, 2))
            guidance = torch.roll(guidance, (-shift, -shift), dims=(1, 2))
        attended = self.attention(
            window_partition(states, window), window_partition(guidance, window), self.shift_mask(states)
        )
        attended = window_reverse(attended, window, height, width)
        if shift:
            attended = torch.roll(attended, (shift, shift), dims=(1, 2))
        hidden_states = hidden_states + attended.view(hidden_states.shape)
        return hidden_states + self.mlp(self.norm2(hidden_states))


def window_order(block: CatSegSwinBlock, device: torch.device | None = None) -> torch.Tensor:
    """Flat grid index of each token of [`window_partition`] after the cyclic shift (roll by `-shift_size`), so that
    one gather does the shift and the partition, and one gather with its inverse permutation undoes them."""
    n = block.resolution
    grid = torch.arange(n * n, device=device).view(1, n, n, 1)
    grid = torch.roll(grid, (-block.shift_size, -block.shift_size), dims=(1, 2))
    return window_partition(grid, block.window_size).reshape(-1)


def swin_guidance_term(block: CatSegSwinBlock, guidance: torch.Tensor) -> torch.Tensor:
    """The guidance half of `block`'s queries and keys in window order, for [`shared_guidance_swin_block`].

    `(batch, 1, grid * grid, guidance_dim)` layer-normalised guidance -> `(batch, 1, windows, window_area,
    2 * hidden_dim)`.
    """
    order = window_order(block, guidance.device)
    attention = block.attention
    guided = guidance_query_key(attention.q_proj, attention.k_proj, guidance.index_select(2, order))
    return guided.view(guided.shape[0], 1, -1, block.window_size**2, guided.shape[-1])


def shared_guidance_swin_block(
    block: CatSegSwinBlock, hidden_states: torch.Tensor, guidance_term: torch.Tensor
) -> torch.Tensor:
    """[`CatSegSwinBlock`] with the guidance's share of the queries and keys from [`swin_guidance_term`] (computed
    once for all classes) and the shift and window partition done as one gather ([`window_order`]).

    `hidden_states` `(batch, classes, grid * grid, hidden_dim)`, contiguous -> the same shape.
    """
    batch, classes, tokens, dim = hidden_states.shape
    order = window_order(block, hidden_states.device)
    windows = block.norm1(hidden_states).index_select(2, order).view(batch, classes, -1, block.window_size**2, dim)
    attended = shared_guidance_window_attention(
        block.attention, windows, guidance_term, block.shift_mask(hidden_states)
    )
    hidden_states = hidden_states + attended.view(batch, classes, tokens, dim).index_select(2, order.argsort())
    return hidden_states + fused_mlp(block.mlp, block.norm2(hidden_states))


class CatSegSpatialAggregation(FastPathModule):
    """Spatial aggregation: a regular and a shifted Swin block over each class's cost map, guided by the image."""

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__()
        self.guidance_norm = nn.LayerNorm(config.appearance_guidance_dim)
        self.blocks = nn.ModuleList([CatSegSwinBlock(config, shift=False), CatSegSwinBlock(config, shift=True)])

    def forward(self, hidden_states: torch.Tensor, appearance_guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, classes, grid, grid, hidden_dim)`.
            appearance_guidance: `(batch, grid, grid, guidance_dim)`: the projected dense CLIP features.
        """
        if self.fast_path:
            return shared_guidance_spatial_aggregation(self, hidden_states, appearance_guidance)
        guidance = self.guidance_norm(appearance_guidance)
        for block in self.blocks:
            hidden_states = block(hidden_states, guidance)
        return hidden_states


def shared_guidance_spatial_aggregation(
    spatial: CatSegSpatialAggregation, hidden_states: torch.Tensor, appearance_guidance: torch.Tensor
) -> torch.Tensor:
    """[`CatSegSpatialAggregation`] through [`shared_guidance_swin_block`], in chunks of classes ([`chunked`]): each
    class's map is aggregated on its own, and the guidance terms are shared by all chunks."""
    guidance = spatial.guidance_norm(appearance_guidance).flatten(1, 2).unsqueeze(1)
    guidance_terms = [swin_guidance_term(block, guidance) for block in spatial.blocks]

    def aggregate(chunk: torch.Tensor) -> torch.Tensor:
        tokens = chunk.flatten(2, 3)
        for block, guidance_term in zip(spatial.blocks, guidance_terms):
            tokens = shared_guidance_swin_block(block, tokens, guidance_term)
        return tokens.view(chunk.shape)

    return chunked(aggregate, hidden_states, dim=1, module=spatial, maps_per_slice=hidden_states.shape[0])


class CatSegLinearAttention(nn.Module):
    """Linear attention over the class axis ("Transformers are RNNs"); queries and keys also see the text guidance.

    There is no output projection, as in the official model.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.q_proj = nn.Linear(dim + guidance_dim, dim)
        self.k_proj = nn.Linear(dim + guidance_dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, length, dim)`, layer-normalised.
            guidance: `(batch, length, guidance_dim)`, concatenated into the queries' and keys' input.
        Returns:
            `(batch, length, dim)`.
        """
        guided = torch.cat([hidden_states, guidance], dim=-1)
        length = hidden_states.shape[-2]
        query = self.feature_map(self.q_proj(guided))
        key = self.feature_map(self.k_proj(guided))
        # The official code divides the values by the sequence length and multiplies the output back by it.
        value = self.v_proj(hidden_states).unflatten(-1, (self.num_heads, -1)) / length
        key_value = torch.einsum("...shd,...she->...hde", key, value)
        return self.attend(query, key.sum(dim=-3), key_value, length)

    def feature_map(self, projected: torch.Tensor) -> torch.Tensor:
        """`elu + 1` of projected queries or keys `(..., dim)`, split into heads `(..., heads, head_dim)`."""
        return (F.elu(projected) + 1).unflatten(-1, (self.num_heads, -1))

    def attend(self, query: torch.Tensor, key_sum: torch.Tensor, key_value: torch.Tensor, length: int) -> torch.Tensor:
        """`(..., queries, heads, head_dim)` queries against the sums over the `length` tokens of the sequence of the
        keys `(..., heads, head_dim)` and of the outer products of keys and values divided by `length` `(..., heads,
        head_dim, head_dim)` -> `(..., queries, dim)`."""
        normaliser = 1.0 / (torch.einsum("...lhd,...hd->...lh", query, key_sum) + self.eps)
        context = torch.einsum("...lhd,...hde,...lh->...lhe", query, key_value, normaliser) * length
        return context.flatten(-2)


def shared_guidance_query_key(
    attention: CatSegLinearAttention, states: torch.Tensor, guided_query_key: torch.Tensor
) -> torch.Tensor:
    """Queries and keys `(..., 2, heads, head_dim)` of `states` `(..., dim)` after the `elu + 1` feature map, the
    guidance half `guided_query_key` (from [`guidance_query_key`], broadcastable to `(..., 2 * dim)`) computed
    apart."""
    dim = states.shape[-1]
    weight = torch.cat([attention.q_proj.weight[:, :dim], attention.k_proj.weight[:, :dim]])
    bias = torch.cat([attention.q_proj.bias, attention.k_proj.bias])
    projected = linear_activation(states, weight, bias) + guided_query_key
    return attention.feature_map(projected.unflatten(-1, (2, dim)))


def padding_key_value(
    attention: CatSegLinearAttention, padding_state: torch.Tensor, padding_guidance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value `(heads, head_dim)` of a padding token: `padding_state` `(dim,)` layer-normalised and
    `padding_guidance` `(guidance_dim,)`."""
    guided = guidance_query_key(attention.q_proj, attention.k_proj, padding_guidance)
    key = shared_guidance_query_key(attention, padding_state, guided)[1]
    return key, attention.v_proj(padding_state).view(attention.num_heads, -1)


def padded_linear_attention(
    attention: CatSegLinearAttention,
    hidden_states: torch.Tensor,
    guided_query_key: torch.Tensor,
    padding: tuple[torch.Tensor, torch.Tensor],
    length: int,
) -> torch.Tensor:
    """[`CatSegLinearAttention`] of the real classes of a sequence padded to `length` tokens with copies of one
    padding token, without the padding tokens.

    The padding tokens are all the same, so their share of the key and key-value sums is one term times their count;
    their own outputs are never needed. The text guidance's half of the queries and keys is computed once per class
    for all positions.

    Args:
        hidden_states: `(batch, positions, classes, dim)`, layer-normalised.
        guided_query_key: `(batch, 1, classes, 2 * dim)` from [`guidance_query_key`].
        padding: the key and value of a padding token, from [`padding_key_value`].
        length: the padded sequence length, at least `classes`.
    Returns:
        `(batch, positions, classes, dim)`.
    """
    query, key = shared_guidance_query_key(attention, hidden_states, guided_query_key).unbind(-3)
    value = linear_activation(hidden_states, attention.v_proj.weight, attention.v_proj.bias)
    value = value.unflatten(-1, (attention.num_heads, -1)) / length
    padding_key, padding_value = padding
    # No branch on the count (it may be 0), so that a traced graph does not depend on the number of classes.
    repeats = length - hidden_states.shape[-2]
    key_value = torch.einsum("...shd,...she->...hde", key, value)
    key_value = key_value + repeats * torch.einsum("hd,he->hde", padding_key, padding_value / length)
    return attention.attend(query, key.sum(dim=-3) + repeats * padding_key, key_value, length)


def pool_maps(hidden_states: torch.Tensor, pooling_size: int) -> torch.Tensor:
    """Average pooling of `(batch, classes, height, width, dim)` maps over the spatial axes."""
    if pooling_size == 1:
        return hidden_states
    pooled = F.avg_pool2d(hidden_states.permute(0, 1, 4, 2, 3).flatten(0, 1), pooling_size)
    return pooled.unflatten(0, hidden_states.shape[:2]).permute(0, 1, 3, 4, 2)


def upsample_maps(hidden_states: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (`align_corners=True`, the official choice) of `(batch, classes, h, w, dim)` maps."""
    if tuple(hidden_states.shape[2:4]) == tuple(size):
        return hidden_states
    upsampled = F.interpolate(
        hidden_states.permute(0, 1, 4, 2, 3).flatten(0, 1), size=size, mode="bilinear", align_corners=True
    )
    return upsampled.unflatten(0, hidden_states.shape[:2]).permute(0, 1, 3, 4, 2)


class CatSegClassAggregation(FastPathModule):
    """Class aggregation: attention across classes at every (pooled) position, guided by the text features.

    The class axis is padded to `config.max_classes` with a learned token, and the result is added back to the
    unpooled input, so the block returns `x + upsample(pool(x) + attention + mlp)` (`2x + delta` without pooling),
    exactly as the official model does.
    """

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__()
        dim, guidance_dim = config.hidden_dim, config.text_guidance_dim
        self.max_classes = config.max_classes
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CatSegLinearAttention(dim, guidance_dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = CatSegMLP(dim, dim * config.mlp_ratio, "relu")

    def forward(self, hidden_states: torch.Tensor, text_guidance: torch.Tensor, pooling_size: int) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, classes, grid, grid, dim)`, at most `config.max_classes` classes.
            text_guidance: `(batch, classes, guidance_dim)`: the projected text features.
            pooling_size: average-pooling window of the attended positions.
        """
        if self.fast_path:
            return closed_form_padding_class_aggregation(self, hidden_states, text_guidance, pooling_size)
        batch, classes, height, width, dim = hidden_states.shape
        pooled = pool_maps(hidden_states, pooling_size)
        if classes < self.max_classes:
            padding = self.max_classes - classes
            tokens = self.padding_tokens.view(1, 1, 1, 1, dim).expand(batch, padding, *pooled.shape[2:4], dim)
            pooled = torch.cat([pooled, tokens], dim=1)
            text_guidance = torch.cat([text_guidance, self.padding_guidance.expand(batch, padding, -1)], dim=1)
        _, length, pooled_height, pooled_width, _ = pooled.shape
        tokens = pooled.permute(0, 2, 3, 1, 4).reshape(-1, length, dim)  # (batch * positions, classes, dim)
        guidance = text_guidance.repeat_interleave(pooled_height * pooled_width, dim=0)
        tokens = tokens + self.attention(self.norm1(tokens), guidance)
        tokens = tokens + self.mlp(self.norm2(tokens))
        tokens = tokens.view(batch, pooled_height, pooled_width, length, dim).permute(0, 3, 1, 2, 4)
        return hidden_states + upsample_maps(tokens, (height, width))[:, :classes]


def closed_form_padding_class_aggregation(
    aggregation: CatSegClassAggregation, hidden_states: torch.Tensor, text_guidance: torch.Tensor, pooling_size: int
) -> torch.Tensor:
    """[`CatSegClassAggregation`] through [`padded_linear_attention`]: the padding tokens enter only the key and
    value sums, in closed form, and their MLP (whose output is dropped) is skipped. Each position attends on its
    own, so the positions go in chunks ([`chunked`])."""
    batch, classes, height, width, dim = hidden_states.shape
    pooled = pool_maps(hidden_states, pooling_size)
    attention = aggregation.attention
    padding = padding_key_value(
        attention, aggregation.norm1(aggregation.padding_tokens.view(dim)), aggregation.padding_guidance.view(-1)
    )
    length = torch.sym_max(classes, aggregation.max_classes)
    guided_query_key = guidance_query_key(attention.q_proj, attention.k_proj, text_guidance.unsqueeze(1))

    def aggregate(chunk: torch.Tensor) -> torch.Tensor:
        tokens = chunk.transpose(1, 2).contiguous()  # (batch, positions, classes, dim)
        tokens = tokens + padded_linear_attention(
            attention, aggregation.norm1(tokens), guided_query_key, padding, length
        )
        tokens = (tokens + fused_mlp(aggregation.mlp, aggregation.norm2(tokens))).transpose(1, 2)
        # Unpooled, the chunk is the block's input at the same positions: its residual is added here, in cache.
        return chunk + tokens if pooling_size == 1 else tokens

    maps_per_position = batch * classes / (height * width)
    tokens = chunked(aggregate, pooled.flatten(2, 3), 2, aggregation, maps_per_slice=maps_per_position)
    if pooling_size == 1:
        return tokens.view(hidden_states.shape)
    return hidden_states + upsample_maps(tokens.view(pooled.shape), (height, width))


class CatSegAggregationLayer(GradientCheckpointingLayer):
    """One round of cost aggregation: spatial aggregation, then class aggregation."""

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__()
        self.spatial_aggregation = CatSegSpatialAggregation(config)
        self.class_aggregation = CatSegClassAggregation(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        appearance_guidance: torch.Tensor,
        text_guidance: torch.Tensor,
        pooling_size: int,
    ) -> torch.Tensor:
        hidden_states = self.spatial_aggregation(hidden_states, appearance_guidance)
        return self.class_aggregation(hidden_states, text_guidance, pooling_size)


class CatSegDecoderStage(nn.Module):
    """x2 transposed convolution of each class's map, concatenation of the projected CLIP guidance, then two
    conv-GroupNorm-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(out_channels // 16, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(out_channels // 16, out_channels)

    def forward(self, hidden_states: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, classes, in_channels, size, size)`.
            guidance: `(batch, guidance_channels, 2 * size, 2 * size)`, the same for every class.
        Returns:
            `(batch, classes, out_channels, 2 * size, 2 * size)`.
        """
        batch, classes = hidden_states.shape[:2]
        upsampled = self.upsample(hidden_states.flatten(0, 1))
        guidance = guidance.repeat_interleave(classes, dim=0)
        hidden_states = self.conv1(torch.cat([upsampled, guidance], dim=1))
        return self.refine(hidden_states).unflatten(0, (batch, classes))

    def refine(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Everything after conv1: GroupNorm-ReLU, conv2, GroupNorm-ReLU, on `(maps, out_channels, size, size)`."""
        hidden_states = F.relu(self.norm1(hidden_states), inplace=True)
        return F.relu(self.norm2(self.conv2(hidden_states)), inplace=True)


def _phase_taps(like: torch.Tensor) -> torch.Tensor:
    """How a x2 transposed convolution followed by a 3x3 convolution reads its low-resolution input, per output phase.

    `(2, 2, 3, 2)` 0/1 tensor on the device and in the dtype of `like`: `[phase, k, d, t]` is 1 when output phase
    `phase` reads, through tap `k` of a 2x2 kernel on the input padded by 1, the 3x3 tap `d` (offset `d - 1`) that
    lands on transposed-convolution tap `t`. Made where it is used rather than kept on the CPU: a CPU tensor in a
    compiled CUDA graph stops `torch.compile(mode="reduce-overhead")` from replaying it as a CUDA graph.
    """
    taps = like.new_zeros(2, 2, 3, 2)
    for phase in (0, 1):
        for offset in (-1, 0, 1):
            row = phase + offset  # upsampled row, relative to twice the input row
            taps[phase, row // 2 - phase + 1, offset + 1, row % 2] = 1
    return taps


def folded_upsample_conv_terms(stage: CatSegDecoderStage, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What [`folded_upsample_conv`] shares between all classes: the folded kernel and conv1's response to the
    inputs that do not depend on the class.

    Args:
        guidance: `(batch, guidance_channels, 2 * size, 2 * size)`.
    Returns:
        The folded kernel `(4 * out_channels, in_channels, 2, 2)`, phases `(row, column)` major, and
        `(batch, out_channels, 2 * size, 2 * size)`: conv1 of `[transposed convolution's bias, guidance]`.
    """
    upsampled_channels = stage.upsample.out_channels
    taps = _phase_taps(guidance)
    kernel = torch.einsum(
        "akyt,blxs,poyx,cots->abpckl", taps, taps, stage.conv1.weight[:, :upsampled_channels], stage.upsample.weight
    )
    bias = stage.upsample.bias[None, :, None, None].expand(guidance.shape[0], -1, *guidance.shape[2:])
    shared = F.conv2d(torch.cat([bias, guidance], dim=1), stage.conv1.weight, padding=1)
    return kernel.flatten(0, 2), shared


def folded_upsample_conv(
    stage: CatSegDecoderStage, hidden_states: torch.Tensor, terms: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """`stage.conv1(cat([stage.upsample(x), guidance]))` computed as one convolution at the input resolution.

    Nothing non-linear separates the transposed convolution from conv1, so the class half of conv1 folded into the
    transposed convolution is a 2x2 convolution per output phase at the input resolution (half the FLOPs of the
    pair), and everything the classes share (the guidance and the transposed convolution's bias) is convolved once
    per image ([`folded_upsample_conv_terms`]).

    `hidden_states` `(batch, classes, in_channels, size, size)` -> `(batch * classes, out_channels, 2 * size,
    2 * size)` in channels-last memory format: the phases are interleaved into it with the shared term added in one
    pass, and the convolutions after it run faster on channels-last input than on the default layout.
    """
    kernel, shared = terms
    batch, classes, _, size, _ = hidden_states.shape
    channels = kernel.shape[0] // 4
    # (maps, 2 * 2 * channels, size + 1, size + 1), viewed channels-last.
    phases = F.conv2d(hidden_states.flatten(0, 1), kernel, padding=1).permute(0, 2, 3, 1)
    shared = shared.permute(0, 2, 3, 1).reshape(batch, 1, size, 2, size, 2, channels)
    upsampled = phases.new_empty(batch, classes, size, 2, size, 2, channels)
    # Output pixel (2i + a, 2j + b) is phase (a, b) of the padded 2x2 convolution at (i + a, j + b).
    for a in (0, 1):
        for b in (0, 1):
            phase = phases[:, a : a + size, b : b + size, (2 * a + b) * channels : (2 * a + b + 1) * channels]
            phase, target = phase.unflatten(0, (batch, classes)), upsampled[..., a, :, b, :]
            # `out=` has no autograd, and dynamo cannot trace it into a strided view.
            if torch.is_grad_enabled() or torch.compiler.is_compiling():
                target.copy_(phase + shared[..., a, :, b, :])
            else:
                torch.add(phase, shared[..., a, :, b, :], out=target)
    return upsampled.view(batch * classes, 2 * size, 2 * size, channels).permute(0, 3, 1, 2)


class CatSegUpsamplingDecoder(FastPathModule):
    """Upsampling decoder: recovers detail at 2x and 4x the grid from intermediate CLIP layers, then one logit map.

    Stage `i` is guided by CLIP block `config.guidance_layers[i]`, upsampled by `2 ** (i + 1)` with a learned
    transposed convolution and projected by a 3x3 convolution with ReLU.
    """

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__()
        vision_dim = config.vision_config.hidden_size
        self.guidance_upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(vision_dim, dim, kernel_size=2 ** (i + 1), stride=2 ** (i + 1))
            for i, dim in enumerate(config.decoder_guidance_dims)
        )
        self.guidance_projections = nn.ModuleList(
            nn.Conv2d(dim, proj_dim, kernel_size=3, padding=1)
            for dim, proj_dim in zip(config.decoder_guidance_dims, config.decoder_guidance_proj_dims)
        )
        in_dims = [config.hidden_dim, *config.decoder_dims[:-1]]
        self.stages = nn.ModuleList(
            CatSegDecoderStage(in_dim, out_dim, proj_dim)
            for in_dim, out_dim, proj_dim in zip(in_dims, config.decoder_dims, config.decoder_guidance_proj_dims)
        )
        self.head = nn.Conv2d(config.decoder_dims[-1], 1, kernel_size=3, padding=1)

    def forward(self, aggregated_features: torch.Tensor, guidance_features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """
        Args:
            aggregated_features: `(batch, classes, grid, grid, hidden_dim)`.
            guidance_features: per stage `(batch, vision_hidden_size, grid, grid)`.
        Returns:
            Logits `(batch, classes, 4 * grid, 4 * grid)`.
        """
        guidance = [
            F.relu(project(upsample(features)))
            for upsample, project, features in zip(
                self.guidance_upsamplers, self.guidance_projections, guidance_features
            )
        ]
        if self.fast_path:
            return folded_upsampling_decoder(self, aggregated_features, guidance)
        hidden_states = aggregated_features.permute(0, 1, 4, 2, 3)
        for stage, stage_guidance in zip(self.stages, guidance):
            hidden_states = stage(hidden_states, stage_guidance)
        return self.head(hidden_states.flatten(0, 1)).view(*hidden_states.shape[:2], *hidden_states.shape[-2:])


def folded_upsampling_decoder(
    decoder: CatSegUpsamplingDecoder, aggregated_features: torch.Tensor, guidance: list[torch.Tensor]
) -> torch.Tensor:
    """[`CatSegUpsamplingDecoder`] with each stage's upsampling and conv1 as [`folded_upsample_conv`], in chunks of
    classes ([`chunked`]); each class is decoded on its own, and the terms shared by the classes are computed once.

    `guidance`: the projected guidance of each stage, `(batch, guidance_channels, size, size)`.
    """
    terms = [folded_upsample_conv_terms(stage, features) for stage, features in zip(decoder.stages, guidance)]

    def decode(chunk: torch.Tensor) -> torch.Tensor:
        hidden_states = chunk.permute(0, 1, 4, 2, 3)
        for stage, stage_terms in zip(decoder.stages, terms):
            hidden_states = stage.refine(folded_upsample_conv(stage, hidden_states, stage_terms))
            hidden_states = hidden_states.unflatten(0, chunk.shape[:2])
        return decoder.head(hidden_states.flatten(0, 1)).view(*chunk.shape[:2], *hidden_states.shape[-2:])

    return chunked(decode, aggregated_features, dim=1, module=decoder, maps_per_slice=aggregated_features.shape[0])


class CatSegPreTrainedModel(PreTrainedModel):
    config_class = CatSegConfig
    base_model_prefix = "catseg"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CatSegAggregationLayer", "CatSegUpsamplingDecoder"]
    # The shifted-window mask is additive, which flash and flex attention do not take; eager and SDPA both reach the
    # window attention and the nested CLIP.
    _supports_sdpa = True
    # The loss is a mean over every pixel and class, so the Trainer must not rescale it by its own token count.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CatSegClassAggregation):
            init.zeros_(module.padding_tokens)
            init.zeros_(module.padding_guidance)
        elif isinstance(module, CatSegModel) and module.visual_prompt_tokens is not None:
            init.xavier_uniform_(module.visual_prompt_tokens)

    @property
    def backbone(self) -> CatSegBackbone:
        """The vision-language backbone (a `CLIPModel`, `SiglipModel`, ... with the [`CatSegBackbone`] interface)."""
        base = self if isinstance(self, CatSegModel) else self.catseg
        return getattr(base, base.backbone_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def set_execution_options(self, fast_paths: bool = True, cost_map_chunk_size: int | None = None) -> None:
        """How the model runs; neither changes the result beyond float rounding, and neither is saved.

        Args:
            fast_paths: run spatial aggregation, class aggregation and the upsampling decoder through their exact
                reformulations, which compute what all classes share once per image (the guidance half of the
                query/key projections, the padding tokens' share of the class attention, the guidance half of the
                decoder's first convolution, folded into the transposed convolution) and work in cache-sized
                chunks, and let the backbone run its tower through its exact faster form where it has one (CLIP:
                [`clip_block_onednn`] in inference). `False` runs the paper's form (upsample -> concatenate ->
                convolve, guidance concatenated into every query and key) and the backbone's own modules.
            cost_map_chunk_size: how many (image, class) cost maps the fast paths process together (see
                [`FastPathModule`]); `None` picks by device.
        """
        if not isinstance(fast_paths, bool):
            raise ValueError(f"fast_paths={fast_paths!r} must be True or False.")
        if cost_map_chunk_size is not None and (
            isinstance(cost_map_chunk_size, bool)
            or not isinstance(cost_map_chunk_size, int)
            or cost_map_chunk_size < 1
        ):
            raise ValueError(f"cost_map_chunk_size={cost_map_chunk_size!r} must be a positive integer, or None.")
        for module in self.modules():
            if isinstance(module, CatSegBackbone):
                module.fast_path = fast_paths
            if isinstance(module, FastPathModule):
                module.fast_path = fast_paths
                module.cost_map_chunk_size = cost_map_chunk_size

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """The backbone's text output for tokenised prompts `(num_classes, sequence_length)`, with `pooler_output`
        the L2-normalised text embeddings `(num_classes, embed_dim)` that CAT-Seg uses."""
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be (num_classes, sequence_length), one vocabulary shared by the batch; got shape "
                f"{tuple(input_ids.shape)}."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        output = self.backbone.encode_text(input_ids, attention_mask, output_hidden_states, output_attentions)
        output.pooler_output = F.normalize(output.pooler_output, dim=-1)
        return output

    def apply_clip_finetune_policy(self) -> None:
        """Set `requires_grad` on the backbone parameters according to `config.clip_finetune` (paper, Table 6).

        Applied when a model is built. `from_pretrained` loads every parameter as trainable (as for any transformers
        model), so call this again after loading to fine-tune. Everything outside the backbone trains; the visual
        prompt tokens train only under the `"prompt"` policy. Parameters that CAT-Seg's use of the backbone never
        reaches (CLIP: the query and key projections of the last vision block, whose dense value path skips them)
        stay frozen whatever the policy, since they could get no gradient (and distributed training could not skip
        the unused-parameter search).
        """
        backbone = self.backbone
        for name, parameter in self.named_parameters():
            in_backbone = self._backbone_parameter_name(name)
            unused = in_backbone is not None and backbone.unused_parameter(in_backbone)
            parameter.requires_grad_(self._learnable_by_policy(name) and not unused)

    def _backbone_parameter_name(self, name: str) -> str | None:
        """`name` inside the backbone (`catseg.clip.text_model...` -> `text_model...`), or `None` outside it."""
        prefix = f"{self.backbone_prefix_path}."
        return name[len(prefix) :] if name.startswith(prefix) else None

    @property
    def backbone_prefix_path(self) -> str:
        """Where the backbone's parameters sit in this model's state dict (`catseg.clip`, `clip`, ...)."""
        base = self if isinstance(self, CatSegModel) else self.catseg
        return base.backbone_prefix if base is self else f"{self.base_model_prefix}.{base.backbone_prefix}"

    def _learnable_by_policy(self, name: str) -> bool:
        """Whether the official fine-tuning rule of `config.clip_finetune` makes parameter `name` trainable."""
        in_backbone = self._backbone_parameter_name(name)
        if in_backbone is not None:
            role = self.backbone.parameter_role(in_backbone)
            return role is not None and role[1] in FINETUNE_POLICIES[self.config.clip_finetune].get(role[0], ())
        if name.endswith("visual_prompt_tokens"):
            return self.config.clip_finetune == "prompt"
        return True

    def parameter_groups(self) -> dict[str, list[str]]:
        """The model's parameters by part, for per-part learning rates: `{"backbone": [...], "visual_prompts": [...],
        "cost_aggregation": [...]}` (names as in `named_parameters()`; the last holds the aggregator and decoder)."""
        groups = {"backbone": [], "visual_prompts": [], "cost_aggregation": []}
        for name, _ in self.named_parameters():
            if self._backbone_parameter_name(name) is not None:
                groups["backbone"].append(name)
            elif name.endswith("visual_prompt_tokens"):
                groups["visual_prompts"].append(name)
            else:
                groups["cost_aggregation"].append(name)
        return groups

    def learnable_parameter_counts(self) -> dict[str, int]:
        """Learnable parameters as the official code counts them: `{"clip": ..., "cost_aggregation": ..., "total":
        ...}`.

        `"clip"` counts the backbone and its visual prompt tokens, `"cost_aggregation"` the aggregator and the
        decoder. With the ViT-L/14@336 preset the totals are the paper's Table 6 (`"qv"`: 70.27M). A parameter
        counts when the official rule of `config.clip_finetune` makes it trainable, even if it receives no gradient:
        the query (and, for some policies, key) projections of the last vision block are counted, as the official
        code marks them trainable, although here they are frozen because its dense value path never uses them.
        """
        counts = {"clip": 0, "cost_aggregation": 0}
        groups = self.parameter_groups()
        parameters = dict(self.named_parameters())
        for group, names in groups.items():
            for name in names:
                if self._learnable_by_policy(name):
                    counts["cost_aggregation" if group == "cost_aggregation" else "clip"] += parameters[name].numel()
        counts["total"] = counts["clip"] + counts["cost_aggregation"]
        return counts


class CatSegModel(CatSegPreTrainedModel):
    """The backbone, the cost volume and its aggregation; [`CatSegForSemanticSegmentation`] adds the upsampling
    decoder.

    The backbone sits under the attribute its adapter names (`clip` for CLIP, `siglip` for SigLIP), so its weights
    keep their checkpoint names (`catseg.clip.vision_model...`).
    """

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__(config)
        adapter = backbone_class(config.backbone_config)
        if config.prompt_length > 0 and not adapter.supports_visual_prompts:
            raise ValueError(
                f"Deep visual prompt tuning (prompt_length > 0) is not implemented for {adapter.__name__} backbones."
            )
        self.backbone_prefix = adapter.catseg_prefix
        self.add_module(self.backbone_prefix, adapter._from_config(config.backbone_config))
        self.embed_dim = adapter.embed_dim(config.backbone_config)
        self.visual_prompt_tokens = (
            nn.Parameter(torch.zeros(config.prompt_depth, config.prompt_length, config.vision_config.hidden_size))
            if config.prompt_length > 0
            else None
        )
        kernel = config.cost_embed_kernel_size
        self.cost_embedding = nn.Conv2d(1, config.hidden_dim, kernel_size=kernel, padding=kernel // 2)
        self.appearance_guidance_projection = nn.Conv2d(
            self.embed_dim, config.appearance_guidance_dim, kernel_size=3, padding=1
        )
        self.text_guidance_projection = nn.Linear(self.embed_dim, config.text_guidance_dim)
        self.layers = nn.ModuleList(CatSegAggregationLayer(config) for _ in range(config.num_layers))
        self.post_init()
        self.apply_clip_finetune_policy()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
        class_pooling_size: int | None = None,
        top_k_classes: int | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
    ) -> CatSegModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images normalised as the backbone expects (use the processor). Other sizes than `config.image_size`
                are resized to it bilinearly, as the official model does.
            input_ids (`torch.LongTensor` of shape `(num_classes, sequence_length)`, *optional*):
                The tokenised class prompts, one vocabulary shared by the whole batch.
            attention_mask (`torch.Tensor` of shape `(num_classes, sequence_length)`, *optional*):
                Mask of `input_ids`.
            text_embeds (`torch.FloatTensor` of shape `(num_classes, embed_dim)` or `(batch_size, num_classes,
            embed_dim)`, *optional*):
                Precomputed text features (from [`~CatSegModel.get_text_features`]) instead of `input_ids`.
            class_pooling_size (`int`, *optional*):
                Pooling of the class aggregation; defaults to `config.class_pooling_size` in training mode and
                `config.eval_class_pooling_size` in evaluation mode (the official protocol).
            top_k_classes (`int`, *optional*):
                Opt-in speed-up for very large vocabularies: aggregate only this many classes, chosen like the
                `config.max_classes` cut. The class aggregation still pads to `max_classes`, so each kept class gets
                exactly the logits the official model gives it on the kept sub-vocabulary; a pixel changes label
                only where its class was pruned. `None` (the official behaviour) keeps up to `max_classes`.
            output_hidden_states (`bool` or `list[int]`, *optional*):
                Return the backbone's vision hidden states (a list: only those indices, the others `None`).
            output_attentions (`bool`, *optional*):
                Return the backbone's vision attention probabilities (eager attention only).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        pixel_values = self._backbone_input(pixel_values)
        if (input_ids is None) == (text_embeds is None):
            raise ValueError(
                "Give the class vocabulary exactly once: either input_ids (num_classes, sequence_length) from the "
                "processor, or text_embeds (num_classes, embed_dim) from get_text_features()."
            )
        if text_embeds is None:
            text_embeds = self.get_text_features(input_ids, attention_mask).pooler_output
        elif text_embeds.shape[-1] != self.embed_dim or text_embeds.ndim not in (2, 3):
            raise ValueError(
                f"text_embeds must be (num_classes, {self.embed_dim}) or (batch_size, num_classes, "
                f"{self.embed_dim}); got shape {tuple(text_embeds.shape)}."
            )
        if text_embeds.shape[-2] == 0:
            raise ValueError("The vocabulary is empty: give at least one class.")
        if class_pooling_size is None:
            class_pooling_size = (
                self.config.class_pooling_size if self.training else self.config.eval_class_pooling_size
            )

        image = self.backbone.dense_image_features(
            pixel_values,
            self.config.guidance_layers,
            self.visual_prompt_tokens,
            output_hidden_states,
            output_attentions,
        )
        dense_image_features = image.dense_image_features
        batch = pixel_values.shape[0]
        class_features = F.normalize(text_embeds, dim=-1).to(dense_image_features.dtype)
        if class_features.ndim == 2:
            class_features = class_features.expand(batch, -1, -1)
        cost_volume = torch.einsum("bchw,btc->bthw", F.normalize(dense_image_features, dim=1), class_features)
        aggregated, selected_classes = cost_volume, None
        if top_k_classes is not None and (
            isinstance(top_k_classes, bool) or not isinstance(top_k_classes, int) or top_k_classes < 1
        ):
            raise ValueError(f"top_k_classes={top_k_classes!r} must be a positive integer, or None.")
        kept = min(self.config.max_classes, top_k_classes or self.config.max_classes)
        if cost_volume.shape[1] > kept:
            # Keep the classes that best match some patch; the rest get a constant logit in the head.
            scores = cost_volume.flatten(2).amax(dim=-1)
            selected_classes = scores.topk(kept, dim=-1).indices.sort(dim=-1).values
            aggregated = cost_volume.gather(
                1, selected_classes[:, :, None, None].expand(-1, -1, *cost_volume.shape[2:])
            )
            class_features = class_features.gather(
                1, selected_classes[:, :, None].expand(-1, -1, class_features.shape[-1])
            )

        hidden_states = self.cost_embedding(aggregated.flatten(0, 1).unsqueeze(1))
        hidden_states = hidden_states.unflatten(0, aggregated.shape[:2]).permute(0, 1, 3, 4, 2).contiguous()
        appearance_guidance = F.relu(self.appearance_guidance_projection(dense_image_features)).permute(0, 2, 3, 1)
        text_guidance = F.relu(self.text_guidance_projection(F.normalize(class_features, dim=-1)))
        for layer in self.layers:
            hidden_states = layer(hidden_states, appearance_guidance, text_guidance, class_pooling_size)

        return CatSegModelOutput(
            aggregated_features=hidden_states.permute(0, 4, 1, 2, 3),
            guidance_features=image.guidance_features,
            dense_image_features=dense_image_features,
            text_embeds=text_embeds,
            cost_volume=cost_volume,
            selected_classes=selected_classes,
            hidden_states=image.hidden_states,
            attentions=image.attentions,
        )

    def _backbone_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` at `config.image_size`: other sizes are resized bilinearly (no antialiasing), as the official
        model does (the ViT-L/14@336 model takes 384 crops and resizes them to 336)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch_size, 3, height, width) normalised images; got shape "
                f"{tuple(pixel_values.shape)}. Prepare images with the CAT-Seg processor."
            )
        size = self.config.image_size
        if tuple(pixel_values.shape[2:]) != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False)
        return pixel_values


class CatSegForSemanticSegmentation(CatSegPreTrainedModel):
    """CAT-Seg with its upsampling decoder: per-class logits for any vocabulary, and the official training loss."""

    def __init__(self, config: CatSegConfig) -> None:
        super().__init__(config)
        self.catseg = CatSegModel(config)
        self.upsampling_decoder = CatSegUpsamplingDecoder(config)
        self.post_init()

    @classmethod
    def from_vision_language_model(
        cls, backbone: PreTrainedModel | str | os.PathLike, **config_kwargs
    ) -> "CatSegForSemanticSegmentation":
        """A new CAT-Seg, ready to train, whose backbone starts from a vision-language checkpoint.

        `backbone` is a model, a hub id or a local folder of any `model_type` with a registered adapter: a
        `CLIPModel` (`"openai/clip-vit-base-patch16"`, OpenCLIP ViT-H/14 and ViT-bigG/14 or MetaCLIP in the CLIP
        format) or a `SiglipModel` (`"google/siglip-base-patch16-384"`, SigLIP 2's fixed-resolution
        `"google/siglip2-base-patch16-384"`). By default the image size gives a 24x24 patch grid (384 for patch 16,
        336 for patch 14), and the guidance layers are the blocks at one and two thirds of the depth (blocks 3 and 7
        of 12, 7 and 15 of 24), as in the released models; `config_kwargs` override any [`CatSegConfig`] field.
        Build the matching processor with `OVSegProcessor.from_backbone(backbone, model)`.
        """
        if isinstance(backbone, (str, os.PathLike)):
            backbone = backbone_class(AutoConfig.from_pretrained(backbone)).from_pretrained(backbone)
        vision = backbone.config.vision_config
        depth = vision.num_hidden_layers
        defaults = {
            "image_size": 24 * vision.patch_size,
            "guidance_layers": [depth // 3 - 1, 2 * depth // 3 - 1],
        }
        config = CatSegConfig(backbone_config=backbone.config.to_dict(), **{**defaults, **config_kwargs})
        model = cls(config)
        model.backbone.load_state_dict(backbone.state_dict())
        return model

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        class_pooling_size: int | None = None,
        top_k_classes: int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> CatSegSemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images normalised as the backbone expects (use the processor). Other sizes than `config.image_size`
                are resized to it bilinearly, as the official model does.
            input_ids (`torch.LongTensor` of shape `(num_classes, sequence_length)`, *optional*):
                The tokenised class prompts, one vocabulary shared by the whole batch.
            attention_mask (`torch.Tensor` of shape `(num_classes, sequence_length)`, *optional*):
                Mask of `input_ids`.
            text_embeds (`torch.FloatTensor` of shape `(num_classes, embed_dim)`, *optional*):
                Precomputed text features instead of `input_ids`, so a vocabulary is encoded once.
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Class indices into the vocabulary, or `config.ignore_index`. Gives the official BCE loss.
            class_pooling_size (`int`, *optional*):
                Pooling of the class aggregation; defaults to the official 2 in training and 1 in evaluation.
            top_k_classes (`int`, *optional*):
                Aggregate only the K best-matching classes per image (see [`CatSegModel.forward`]); the others get
                `config.dropped_class_logit`.
            output_hidden_states (`bool`, *optional*):
                Also return the backbone's vision hidden states, the dense image features, the cost volume, the
                aggregated features and the text features.
            output_attentions (`bool`, *optional*):
                Return the backbone's vision attention probabilities (eager attention only).

        Example:

        ```python
        >>> from transformers import AutoModelForSemanticSegmentation, AutoProcessor
        >>> model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        >>> inputs = processor(images=image, text=["cat", "sofa", "wooden floor"], return_tensors="pt")
        >>> logits = model(**inputs).logits  # (1, 3, 96, 96)
        ```
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        base = self.catseg(
            pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            text_embeds=text_embeds,
            class_pooling_size=class_pooling_size,
            top_k_classes=top_k_classes,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        aggregated = base.aggregated_features.permute(0, 2, 3, 4, 1)
        logits = self.upsampling_decoder(aggregated, base.guidance_features)
        if base.selected_classes is not None:
            full = logits.new_full(
                (logits.shape[0], base.cost_volume.shape[1], *logits.shape[2:]), self.config.dropped_class_logit
            )
            logits = full.scatter(1, base.selected_classes[:, :, None, None].expand_as(logits), logits)

        loss = self.segmentation_loss(logits, labels) if labels is not None else None
        hidden = {}
        if output_hidden_states:
            hidden = {
                "dense_image_features": base.dense_image_features,
                "cost_volume": base.cost_volume,
                "aggregated_features": base.aggregated_features,
                "text_embeds": base.text_embeds,
                "selected_classes": base.selected_classes,
                "hidden_states": base.hidden_states,
            }
        return CatSegSemanticSegmenterOutput(loss=loss, logits=logits, attentions=base.attentions, **hidden)

    def segmentation_loss(self, logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """Binary cross-entropy on one-hot targets at the label resolution; ignored pixels are all-zero targets."""
        num_classes = logits.shape[1]
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must be (batch_size, height, width) with batch_size {logits.shape[0]}; got shape "
                f"{tuple(labels.shape)}."
            )
        ignored = labels == self.config.ignore_index
        # The check reads the labels' values, which a traced graph cannot branch on; compiled, an index outside the
        # vocabulary still fails, in the scatter below.
        if not torch.compiler.is_compiling() and bool(((labels < 0) | (labels >= num_classes))[~ignored].any()):
            bad = sorted(set(labels[~ignored & ((labels < 0) | (labels >= num_classes))].unique().tolist()))
            raise ValueError(
                f"labels hold values {bad[:10]} outside the {num_classes} classes of the vocabulary and the ignore "
                f"index {self.config.ignore_index}."
            )
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        targets = torch.zeros_like(logits)
        targets.scatter_(1, labels.masked_fill(ignored, 0).unsqueeze(1), (~ignored).unsqueeze(1).to(logits.dtype))
        return F.binary_cross_entropy_with_logits(logits, targets)


__all__ = ["CatSegModel", "CatSegForSemanticSegmentation", "CatSegPreTrainedModel"]
