"""`torch.compile(model, fullgraph=True)` captures CAT-Seg and LSeg in one graph, computes what eager mode computes,
and takes any vocabulary size within `max_classes` without recompiling.

Capture is what can break in CI, so these tests trace with dynamo and AOT autograd (`aot_eager`: the graphs run in
eager kernels, no code generation); the benchmarks measure inductor. A backend that counts its calls counts the
compilations: a recompile is a second call.

On CPU, ATen picks a convolution kernel by batch size (oneDNN from 16 maps up), and that choice is made while
tracing: CAT-Seg and LSeg convolve every (image, class) map, so the graph holds for `batch * classes` below 16 or from
16 up, and crossing 16 compiles once more. The vocabularies here stay on one side (batch 2, at least 8 classes).
"""

import pytest
import torch
import torch._dynamo
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegForSemanticSegmentation

# The graph runs the same kernels as eager mode, only in another order of a few additions (AOT autograd's
# decompositions): the fast-path tests' tolerance.
CLOSE = dict(atol=1e-5, rtol=1e-5)
CLIP_EOS = 49407


class CountingBackend:
    """`aot_eager`, counting the graphs it is given (one per compilation)."""

    def __init__(self):
        self.graphs = 0
        self.backend = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.backend(graph_module, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def catseg() -> CatSegForSemanticSegmentation:
    return randomised(CatSegForSemanticSegmentation(tiny_catseg_config(max_classes=16)))


def lseg() -> LSegForSemanticSegmentation:
    # arch_option 1 adds the spatial regularisation block, so its graph is captured too.
    return randomised(LSegForSemanticSegmentation(tiny_lseg_config(arch_option=1, block_depth=2)))


def randomised(model):
    """Random parameters everywhere (the default init leaves biases and padding tokens at zero)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def text_embeds(classes: int) -> torch.Tensor:
    embeds = torch.randn(classes, 16)
    torch._dynamo.mark_dynamic(embeds, 0)
    return embeds


def input_ids(classes: int) -> torch.Tensor:
    """Prompts of 7 tokens ending with CLIP's end-of-text token, the class dimension dynamic."""
    ids = torch.randint(0, CLIP_EOS - 1, (classes, 7))
    ids[:, -1] = CLIP_EOS
    torch._dynamo.mark_dynamic(ids, 0)
    return ids


PIXELS = (2, 3, 64, 64)
MODELS = pytest.mark.parametrize("build", [catseg, lseg], ids=["catseg", "lseg"])


@MODELS
@pytest.mark.parametrize("text", ["text_embeds", "input_ids"])
def test_inference_is_one_graph_equal_to_eager_for_every_vocabulary_size(build, text):
    model = build().eval()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    pixel_values = torch.randn(PIXELS)
    make = text_embeds if text == "text_embeds" else input_ids
    # Up to CAT-Seg's max_classes (16), to which its class aggregation pads the class axis.
    for classes in (9, 16, 8, 12):
        vocabulary = {text: make(classes)}
        with torch.no_grad():
            # Compiled first: a fresh model must compile, not one that an eager call has already set up.
            logits = compiled(pixel_values=pixel_values, **vocabulary).logits
            expected = model(pixel_values=pixel_values, **vocabulary).logits
        assert logits.shape == expected.shape == (2, classes, *expected.shape[2:])
        torch.testing.assert_close(logits, expected, **CLOSE)
    assert backend.graphs == 1, f"{backend.graphs} compilations for 4 vocabulary sizes: the class count recompiles"


@MODELS
def test_training_step_is_one_graph_with_eager_loss_and_gradients(build):
    model = build().train()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    pixel_values = torch.randn(PIXELS)

    def step(forward, classes: int, seed: int):
        torch.manual_seed(seed)
        ids = input_ids(classes)
        labels = torch.randint(0, classes, (2, 64, 64))
        labels[:, :8] = model.config.ignore_index
        model.zero_grad(set_to_none=True)
        loss = forward(pixel_values=pixel_values, input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    for seed, classes in enumerate((8, 11)):
        loss, grads = step(compiled, classes, seed)
        expected_loss, expected_grads = step(model, classes, seed)
        torch.testing.assert_close(loss, expected_loss, **CLOSE)
        assert grads.keys() == expected_grads.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], **CLOSE, msg=lambda m: f"{name}: {m}")
    assert backend.graphs == 1, f"{backend.graphs} compilations of the training step for 2 vocabulary sizes"


def test_catseg_vocabulary_beyond_max_classes_keeps_the_top_classes_in_one_graph():
    # Above max_classes (16) the model keeps the best-matching 16 classes: one graph for all such vocabularies.
    model = catseg().eval()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    pixel_values = torch.randn(PIXELS)
    for classes in (20, 27):
        embeds = text_embeds(classes)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, text_embeds=embeds).logits
            got = compiled(pixel_values=pixel_values, text_embeds=embeds).logits
            torch.testing.assert_close(got, expected, **CLOSE)
    assert backend.graphs == 1


@MODELS
def test_the_graph_reads_nothing_but_the_inputs_and_the_weights(build):
    # On a GPU, a tensor that the graph reads from elsewhere (a CPU constant of the module, say) keeps
    # mode="reduce-overhead" from replaying the graph as a CUDA graph.
    model = build().eval()
    placeholders = []

    def backend(graph_module, example_inputs):
        # Tensors only: the dynamic class count is an input too, a symbolic integer.
        nodes = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
        placeholders.extend(node.name for node, value in zip(nodes, example_inputs) if isinstance(value, torch.Tensor))
        return graph_module

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        compiled(pixel_values=torch.randn(PIXELS), text_embeds=text_embeds(9))
    others = [name for name in placeholders if "_parameters_" not in name and "_buffers_" not in name]
    assert others == ["l_kwargs_pixel_values_", "l_kwargs_text_embeds_"]
