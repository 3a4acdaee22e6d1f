"""CAT-Seg on other backbones: SigLIP / SigLIP 2 (FixRes) through the backbone interface, OpenCLIP-shaped CLIPs
(patch 14, other widths and input sizes), runtime options and concurrent inference. All offline, on tiny models
and tokenizers built on the spot."""

import threading
import time

import pytest
import torch
from tests.tiny_models import TINY_CATSEG, save_tiny_siglip, tiny_catseg_config, tiny_clip_config, tiny_siglip_config
from transformers import CLIPConfig, CLIPModel, SiglipModel

from modeling_catseg import (
    CATSEG_BACKBONES,
    CatSegBackbone,
    CatSegClipBackbone,
    CatSegConfig,
    CatSegForSemanticSegmentation,
    CatSegSiglipBackbone,
)
from modeling_catseg.backbones_catseg import siglip_dense_embeddings
from processing import OVSegProcessor, segment
from tests.training.engine.test_training_resume import shapes_dir  # noqa: F401  (fixture)
from training.models.remote_code import register_local_classes

register_local_classes()  # so that a saved processor loads back here without remote code


def tiny_from(folder, **overrides) -> CatSegForSemanticSegmentation:
    return CatSegForSemanticSegmentation.from_vision_language_model(str(folder), **{**TINY_CATSEG, **overrides})


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip2"))


@pytest.fixture(scope="module")
def siglip_catseg(siglip_folder):
    torch.manual_seed(0)
    return tiny_from(siglip_folder).eval()


def test_adapters_are_registered_by_model_type():
    assert CATSEG_BACKBONES["clip"] is CatSegClipBackbone and CATSEG_BACKBONES["siglip"] is CatSegSiglipBackbone
    assert issubclass(CatSegSiglipBackbone, SiglipModel) and issubclass(CatSegSiglipBackbone, CatSegBackbone)
    with pytest.raises(ValueError, match="CAT-Seg has no backbone adapter for model_type 'siglip2' .*Add a backbone"):
        CatSegForSemanticSegmentation(tiny_catseg_config(backbone_config={"model_type": "siglip2"}))


def test_siglip_dense_embedding_is_the_attention_pool_of_each_patch_alone(siglip_catseg):
    head = siglip_catseg.backbone.vision_model.head
    tokens = torch.randn(2, 5, 32)
    dense = siglip_dense_embeddings(head, tokens)
    with torch.no_grad():
        for index in range(5):
            # One key: the probe's attention weight is 1, whatever the probe.
            torch.testing.assert_close(dense[:, index], head(tokens[:, index : index + 1]), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_siglip_backbone_reads_the_towers_public_outputs(siglip_catseg):
    pixel_values = torch.randn(2, 3, 64, 64)
    backbone = siglip_catseg.backbone
    output = backbone.vision_model(pixel_values, output_hidden_states=True, interpolate_pos_encoding=True)
    image = backbone.dense_image_features(pixel_values, [0, 2], output_hidden_states=[1])
    grid = lambda tokens: tokens.transpose(1, 2).unflatten(2, (4, 4))  # noqa: E731
    torch.testing.assert_close(image.guidance_features[1], grid(output.hidden_states[3]))
    torch.testing.assert_close(
        image.dense_image_features, grid(siglip_dense_embeddings(backbone.vision_model.head, output.last_hidden_state))
    )
    assert image.hidden_states[0] is None and image.hidden_states[1].shape == (2, 16, 32)


def test_from_vision_language_model_loads_siglip_weights_and_keeps_their_names(siglip_folder, siglip_catseg):
    reference = SiglipModel.from_pretrained(siglip_folder)
    assert (
        type(siglip_catseg.backbone) is CatSegSiglipBackbone and siglip_catseg.backbone_prefix_path == "catseg.siglip"
    )
    state = siglip_catseg.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(state[f"catseg.siglip.{name}"], tensor), name
    assert siglip_catseg.config.backbone_config.model_type == "siglip" and siglip_catseg.catseg.embed_dim == 32
    assert siglip_catseg.config.image_size == 64 and siglip_catseg.config.guidance_layers == [0, 1]


@pytest.mark.parametrize("policy", ["qv", "attention", "full", "qv_image"])
def test_every_trainable_siglip_parameter_gets_a_gradient(siglip_folder, policy):
    torch.manual_seed(0)
    model = tiny_from(siglip_folder, clip_finetune=policy).train()
    parameters = dict(model.named_parameters())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    assert not parameters["catseg.siglip.vision_model.head.probe"].requires_grad
    assert ("catseg.siglip.vision_model.head.attention.in_proj_weight" in trainable) == (policy != "qv_text")
    assert ("catseg.siglip.text_model.encoder.layers.0.self_attn.q_proj.weight" in trainable) == (policy != "qv_image")
    ids = torch.randint(4, 20, (3, 64))
    model(torch.randn(2, 3, 64, 64), input_ids=ids, labels=torch.zeros(2, 16, 16, dtype=torch.long)).loss.backward()
    assert {name for name, p in parameters.items() if p.grad is not None and p.grad.abs().sum() > 0} == trainable


def test_visual_prompt_tuning_is_refused_for_siglip_in_one_sentence():
    config = tiny_catseg_config(backbone_config=tiny_siglip_config(), prompt_depth=1, prompt_length=2)
    with pytest.raises(ValueError, match="^Deep visual prompt tuning .* not implemented for CatSegSiglipBackbone"):
        CatSegForSemanticSegmentation(config)


def test_processor_from_backbone_takes_the_backbones_tokenizer_normalisation_and_text_rules(
    siglip_folder, siglip_catseg, tmp_path
):
    processor = OVSegProcessor.from_backbone(siglip_folder, siglip_catseg)
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5] and processor.lowercase
    prompts, _ = processor.build_prompts(["Red Dots", "cat"])
    assert prompts == ["a photo of a red dots in the scene", "a photo of a cat in the scene"]
    inputs = processor(text=["Red Dots", "cat"])
    assert inputs["input_ids"].shape == (2, 64)  # padded as SigLIP was trained, on the right
    assert inputs["input_ids"][0, 0] != 0 and inputs["input_ids"][0, -1] == 0
    processor.save_pretrained(tmp_path)
    reloaded = OVSegProcessor.from_pretrained(tmp_path)
    assert reloaded.lowercase and torch.equal(reloaded(text=["Red Dots", "cat"])["input_ids"], inputs["input_ids"])


@torch.no_grad()
def test_siglip_text_embeddings_do_not_depend_on_the_other_prompts(siglip_folder, siglip_catseg):
    """Fixed-length padding: a prompt's embedding is the same whatever it is batched with (SigLIP reads the last
    position, so padding to the longest prompt would change it)."""
    processor = OVSegProcessor.from_backbone(siglip_folder, siglip_catseg)
    alone = processor.encode_text(siglip_catseg, processor(text=["cat"]))
    together = processor.encode_text(siglip_catseg, processor(text=["cat", "a wooden floor in the red scene"]))
    torch.testing.assert_close(together[:1], alone)


def test_siglip_catseg_saves_and_reloads_with_its_backbone(siglip_catseg, tmp_path):
    siglip_catseg.save_pretrained(tmp_path)
    reloaded = CatSegForSemanticSegmentation.from_pretrained(tmp_path).eval()
    pixel_values, text_embeds = torch.randn(1, 3, 64, 64), torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(
            reloaded(pixel_values, text_embeds=text_embeds).logits,
            siglip_catseg(pixel_values, text_embeds=text_embeds).logits,
        )
    assert type(reloaded.backbone) is CatSegSiglipBackbone


@pytest.mark.parametrize(
    "image_size,window_size", [(336, 12), (378, 9), (448, 16)]
)  # grids of 24, 27 and 32 patches of 14 pixels
@torch.no_grad()
def test_openclip_shaped_clips_patch_14_other_widths_and_input_sizes(image_size, window_size):
    """ViT-H/14 and ViT-bigG/14 as `CLIPModel`s: patch 14, a vision tower wider than the text tower and than the
    joint space, guidance layers at a third and two thirds of the depth, and 336/378/448 inputs."""
    clip_config = tiny_clip_config(vision_layers=6, patch_size=14)
    clip_config["vision_config"].update(hidden_size=48, intermediate_size=96, num_attention_heads=3, image_size=224)
    clip_config["projection_dim"] = 24
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**clip_config))
    settings = {**TINY_CATSEG, "image_size": image_size, "window_size": window_size}
    del settings["guidance_layers"]  # the default: a third and two thirds of the depth
    model = CatSegForSemanticSegmentation.from_vision_language_model(clip, **settings).eval()
    grid = image_size // 14
    assert model.config.guidance_layers == [1, 3] and model.catseg.embed_dim == 24
    output = model(
        torch.randn(1, 3, image_size, image_size), text_embeds=torch.randn(3, 24), output_hidden_states=True
    )
    assert output.logits.shape == (1, 3, 4 * grid, 4 * grid)
    assert output.dense_image_features.shape == (1, 24, grid, grid)
    assert [
        features.shape[1:]
        for features in model.catseg(
            torch.randn(1, 3, image_size, image_size), text_embeds=torch.randn(3, 24)
        ).guidance_features
    ] == [(48, grid, grid)] * 2
    model.set_execution_options(fast_paths=False)
    plain = model(torch.zeros(1, 3, image_size, image_size), text_embeds=torch.ones(3, 24)).logits
    model.set_execution_options()
    fast = model(torch.zeros(1, 3, image_size, image_size), text_embeds=torch.ones(3, 24)).logits
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


def test_two_concurrent_segment_calls_give_the_sequential_results_without_slowing_down(siglip_folder, siglip_catseg):
    """A server answering two requests at once: same label maps as one after the other, and together no slower than
    twice the sequential time (the chunk workers are shared, and no call changes a thread count)."""
    processor = OVSegProcessor.from_backbone(siglip_folder, siglip_catseg)
    siglip_catseg.set_execution_options(cost_map_chunk_size=2)  # chunked, so the shared workers are exercised
    images = [torch.randint(0, 255, (96, 128, 3), dtype=torch.uint8).numpy() for _ in range(4)]
    labels = ["cat", "dog", "sofa", "floor", "red dots"]

    def run() -> list:
        return [result.label_map for result in segment(siglip_catseg, processor, images, labels, cache=False)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run()  # warm-up
        start = time.perf_counter()
        sequential = [run(), run()]
        sequential_seconds = time.perf_counter() - start
        results = [None, None]

        def worker(index: int) -> None:
            results[index] = run()

        requests = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
        start = time.perf_counter()
        for request in requests:
            request.start()
        for request in requests:
            request.join()
        concurrent_seconds = time.perf_counter() - start
        assert torch.get_num_threads() == 2
    finally:
        siglip_catseg.set_execution_options()
        torch.set_num_threads(threads)
    for result, expected in zip(results, sequential):
        assert all((a == b).all() for a, b in zip(result, expected))
    assert concurrent_seconds < 2 * sequential_seconds, (concurrent_seconds, sequential_seconds)


def test_a_catseg_config_without_a_backbone_is_the_released_clip():
    config = CatSegConfig()
    assert config.backbone_config.model_type == "clip" and config.backbone_config.projection_dim == 512


def save_tiny_openclip_h(folder):
    """A `CLIPModel` shaped like OpenCLIP ViT-H/14 in miniature (patch 14, the vision tower wider than the text
    tower), saved with no tokenizer: the bundled CLIP one serves, as for every CLIP."""
    clip_config = tiny_clip_config(vision_layers=6, patch_size=14)
    clip_config["vision_config"].update(hidden_size=48, intermediate_size=96, num_attention_heads=3)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**clip_config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backbone", ["siglip2", "siglip", "openclip-h"])
def test_a_new_backbone_trains_saves_reloads_as_remote_code_and_segments(backbone, tmp_path, shapes_dir):  # noqa: F811
    """The whole life of a model on another backbone: `train()` from the checkpoint, the Hub-ready folder, the Auto
    classes and the pipeline in a process that cannot import this project, and `ovseg-segment`."""
    import numpy as np
    import PIL.Image
    from tests.isolation import run_isolated
    from tests.training.engine.test_training_resume import tiny_train_config

    import training.commands.segment as cli
    from training.engine.loop import train

    image_size = 56 if backbone == "openclip-h" else 64  # a 4x4 grid at patch 14 or 16
    if backbone == "openclip-h":
        folder = save_tiny_openclip_h(tmp_path / backbone)
    else:
        folder = save_tiny_siglip(tmp_path / backbone, generation=2 if backbone == "siglip2" else 1)
    settings = {**TINY_CATSEG, "image_size": image_size}
    result = train(
        tiny_train_config(
            tmp_path / "run",
            shapes_dir,
            clip_model=str(folder),
            model_config=settings,
            crop_size=image_size,
            min_size_train=image_size,
            max_steps=2,
            save_steps=2,
        )
    )
    model_dir = result.model_dir
    saved = CatSegForSemanticSegmentation.from_pretrained(model_dir).eval()
    assert saved.config.backbone_config.model_type == ("clip" if backbone == "openclip-h" else "siglip")
    photo = tmp_path / "photo.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(photo)
    processor = OVSegProcessor.from_pretrained(model_dir)
    expected = segment(saved, processor, str(photo), ["red stripes", "green dots", "background"]).label_map
    loaded = run_isolated(
        f"""
        import json
        import numpy as np
        from transformers import AutoModel, pipeline

        folder = {str(model_dir)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
        labels = ["red stripes", "green dots", "background"]
        label_map = np.full((40, 60), -1)
        for entry in segmenter({str(photo)!r}, candidate_labels=labels):
            label_map[np.asarray(entry["mask"]) == 255] = labels.index(entry["label"])
        print(json.dumps({{"module": type(model).__module__, "backbone": type(model.backbone).__name__,
                          "label_map": label_map.tolist()}}))
        """,
        tmp_path,
    )
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["backbone"] == ("CatSegClipBackbone" if backbone == "openclip-h" else "CatSegSiglipBackbone")
    assert np.array_equal(np.array(loaded["label_map"]), expected)
    out = tmp_path / "out"
    argv = ["--model", model_dir, "--labels", "red stripes, green dots, background", "--out", out, photo]
    assert cli.main([str(a) for a in argv]) == 0
    written = np.array(PIL.Image.open(out / "photo_labels.png"))
    assert np.array_equal(written, expected)
