"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) on a tiny CAT-Seg.

The mixins come from the sdist of the installed transformers release (`tests/transformers_common.py`). CAT-Seg takes
one vocabulary for the whole batch: `input_ids` is `(num_classes, sequence_length)` while `pixel_values` is
`(batch_size, 3, height, width)`. The few common tests that assume every input is batch-first are skipped below,
each with its reason.
"""

import unittest

import pytest
import torch
from tests.tiny_models import tiny_catseg_config, tiny_clip_config, tiny_siglip_config
from parameterized import parameterized
from tests.transformers_common import import_common

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation, CatSegModel

common = import_common("test_modeling_common")
ConfigTester = import_common("test_configuration_common").ConfigTester
ModelTesterMixin, floats_tensor, ids_tensor = common.ModelTesterMixin, common.floats_tensor, common.ids_tensor


class CatSegModelTester:
    """Builds the tiny configuration and inputs the common tests run on."""

    def __init__(self, parent, batch_size=2, num_classes=3, sequence_length=7, image_size=64):
        self.parent = parent
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.sequence_length = sequence_length
        self.image_size = image_size
        config = self.get_config()
        vision = config.backbone_config.vision_config
        # What the attention and hidden-state tests check: the CLIP vision tower's blocks, whose last block
        # (the dense value path) has no attention.
        self.num_hidden_layers = vision.num_hidden_layers - 1
        self.expected_num_hidden_layers = vision.num_hidden_layers + 1
        self.hidden_size = vision.hidden_size
        self.num_attention_heads = vision.num_attention_heads
        self.seq_length = 1 + config.feature_resolution**2
        self.is_training = True

    def get_config(self) -> CatSegConfig:
        # Under the mixin's 1M-parameter cap: a 1000-token vocabulary, three vision blocks (two with attention).
        clip = tiny_clip_config(vision_layers=3)
        clip["text_config"].update(vocab_size=1000, bos_token_id=998, eos_token_id=999)
        return tiny_catseg_config(backbone_config=clip)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        # Prompts: start token, words, then the end-of-text token (the largest id) in the last position.
        input_ids = ids_tensor([self.num_classes, self.sequence_length], 998)
        input_ids[:, 0] = 998
        input_ids[:, -1] = 999
        return self.get_config(), pixel_values, input_ids

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, input_ids = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "input_ids": input_ids}


class CatSegCommonTests(ModelTesterMixin):
    """What both test classes share; each runs the mixin on one model class."""

    test_resize_embeddings = False  # the vocabulary is CLIP's; CAT-Seg adds no token embeddings of its own
    _is_composite = True  # CLIP is nested inside, with its own sub-configurations
    # The eager/SDPA comparisons build their own inputs from `main_input_name` plus these.
    additional_model_inputs = ["input_ids"]

    def setUp(self):
        self.model_tester = CatSegModelTester(self)
        self.model_tester.num_hidden_states_types = self.num_hidden_states_types
        self.config_tester = ConfigTester(self, config_class=CatSegConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = dict(inputs_dict)
        if return_labels and model_class is CatSegForSemanticSegmentation:
            size = (self.model_tester.batch_size, self.model_tester.image_size, self.model_tester.image_size)
            # The same labels on every call: some tests compare two calls' losses.
            labels = torch.randint(0, self.model_tester.num_classes, size, generator=torch.Generator().manual_seed(0))
            inputs_dict["labels"] = labels.to(common.torch_device)
        return inputs_dict

    def _text_features_get_expected_num_attentions(self, model_tester=None):
        # get_text_features returns CLIP's text tower output, whose depth differs from the vision tower's.
        return self.model_tester.get_config().backbone_config.text_config.num_hidden_layers

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip("input_ids hold one vocabulary for the whole batch, so the batch cannot be split along them")
    def test_batching_equivalence(self):
        pass

    @unittest.skip("input_ids hold one vocabulary for the whole batch, so the batch cannot be split along them")
    def test_multi_gpu_data_parallel_forward(self):
        pass

    @parameterized.expand(common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        if use_attention_mask:
            self.skipTest(
                "the test pads a batch-first text input with a (batch_size, length) attention_mask; CAT-Seg's prompts "
                "are one (num_classes, length) vocabulary shared by the batch"
            )
        common._test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
        )

    @unittest.skip(
        "the first hidden state is CLIP's embedding output, which the official fine-tuning policies always freeze, so "
        "it has no gradient to retain; the later ones do (test_training)"
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass


class CatSegModelTest(CatSegCommonTests, unittest.TestCase):
    all_model_classes = (CatSegModel,)
    num_hidden_states_types = 1  # the cost volume and its inputs are always returned; hidden_states adds one field

    @unittest.skip("CatSegModel has no loss; training is tested with CatSegForSemanticSegmentation")
    def test_training(self):
        pass

    @unittest.skip("CatSegModel has no loss; training is tested with CatSegForSemanticSegmentation")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip("CatSegModel has no loss; training is tested with CatSegForSemanticSegmentation")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip("CatSegModel has no loss; training is tested with CatSegForSemanticSegmentation")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass


class CatSegForSemanticSegmentationTest(CatSegCommonTests, unittest.TestCase):
    all_model_classes = (CatSegForSemanticSegmentation,)
    # output_hidden_states adds the vision hidden states, the dense features, the cost volume, the aggregated
    # features and the text features.
    num_hidden_states_types = 5

    def test_model(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = CatSegForSemanticSegmentation(config).eval()
        with torch.no_grad():
            output = model(**inputs)
        tester, side = self.model_tester, 4 * config.feature_resolution
        self.assertEqual(tuple(output.logits.shape), (tester.batch_size, tester.num_classes, side, side))


@pytest.mark.parametrize("num_classes", [2, 5])
@torch.no_grad()
def test_torch_export_from_text_embeds_with_a_dynamic_number_of_classes(num_classes):
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    example = torch.randn(3, model.catseg.embed_dim)
    # Vocabularies up to max_classes - 1 are padded; larger ones take the data-dependent top-k cut.
    classes = torch.export.Dim("num_classes", min=1, max=model.config.max_classes - 1)
    program = torch.export.export(
        model,
        (pixel_values,),
        {"text_embeds": example},
        dynamic_shapes={"pixel_values": None, "text_embeds": {0: classes}},
        strict=False,
    )
    text_embeds = torch.randn(num_classes, model.catseg.embed_dim)
    torch.testing.assert_close(
        program.module()(pixel_values, text_embeds=text_embeds).logits,
        model(pixel_values, text_embeds=text_embeds).logits,
        atol=1e-5,
        rtol=1e-4,
    )


class SiglipCatSegModelTester(CatSegModelTester):
    """The same tiny CAT-Seg on a SigLIP backbone: no CLS token, every vision block attends (the dense path is the
    attention-pooling head), and prompts padded to a fixed length."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        config = self.get_config()
        vision = config.backbone_config.vision_config
        self.num_hidden_layers = vision.num_hidden_layers
        self.seq_length = config.feature_resolution**2

    def get_config(self) -> CatSegConfig:
        # The mixin's limit is two attending blocks; the configuration keeps guidance before the last block.
        return tiny_catseg_config(backbone_config=tiny_siglip_config(vision_layers=2), guidance_layers=[0, 0])

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.num_classes, self.sequence_length], 999)
        return self.get_config(), pixel_values, input_ids


def use_siglip_tester(test: unittest.TestCase) -> None:
    test.model_tester = SiglipCatSegModelTester(test)
    test.model_tester.num_hidden_states_types = test.num_hidden_states_types


# Subclasses of the CLIP test classes, so that their skips (with their reasons) hold here too.
class SiglipCatSegModelTest(CatSegModelTest):
    def setUp(self):
        super().setUp()
        use_siglip_tester(self)


class SiglipCatSegForSemanticSegmentationTest(CatSegForSemanticSegmentationTest):
    def setUp(self):
        super().setUp()
        use_siglip_tester(self)
