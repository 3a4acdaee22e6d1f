"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) on a tiny LSeg.

Structured like transformers' `tests/models/clipseg/test_modeling_clipseg.py`. The mixins come from the sdist of the
installed release (`tests/transformers_common.py`). Every skipped common test says why it cannot apply.
"""

import unittest

import torch
from tests.tiny_models import tiny_lseg_config
from tests.transformers_common import import_common

from modeling_lseg import LSegConfig, LSegForSemanticSegmentation, LSegModel

modeling_common = import_common("test_modeling_common")
configuration_common = import_common("test_configuration_common")


class LSegModelTester:
    """Builds the tiny config and inputs that the common tests run on: 2 images of 64x64 and 3 labels."""

    def __init__(self, parent, batch_size=2, num_labels=3, image_size=64, sequence_length=7):
        self.parent = parent
        self.batch_size = batch_size
        self.num_labels = num_labels
        self.image_size = image_size
        self.sequence_length = sequence_length
        # The common hidden-state and attention checks read these.
        self.num_hidden_layers = 2
        self.hidden_size = 32
        self.num_attention_heads = 2
        self.seq_length = 1 + (image_size // 16) ** 2
        self.is_training = True
        self.text_model_tester = LSegTextModelTester(self)

    def get_config(self) -> LSegConfig:
        # Smaller than tiny_lseg_config so that the common size limits hold: 2 ViT blocks (hooks may repeat one) and
        # a 1,000-token vocabulary whose last id ends the text.
        config = tiny_lseg_config()
        dpt_config = {**config.dpt_config.to_dict(), "num_hidden_layers": 2, "backbone_out_indices": [0, 0, 1, 1]}
        clip_config = config.clip_config.to_dict()
        clip_config["text_config"].update(vocab_size=1000, eos_token_id=999)
        return LSegConfig(dpt_config=dpt_config, clip_config=clip_config)

    def prepare_config_and_inputs(self):
        generator = torch.Generator().manual_seed(0)
        pixel_values = torch.rand(self.batch_size, 3, self.image_size, self.image_size, generator=generator) * 2 - 1
        # Official-style label ids: start, two random tokens, end of text, then padding.
        input_ids = torch.randint(1, 998, (self.num_labels, self.sequence_length), generator=generator)
        input_ids[:, 0], input_ids[:, 3], input_ids[:, 4:] = 998, 999, 999
        attention_mask = torch.ones_like(input_ids)
        attention_mask[:, 4:] = 0
        return self.get_config(), pixel_values, input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class LSegTextModelTester:
    """The text inputs of `get_text_features`: the CLIP text tower has 2 layers."""

    num_hidden_layers = 2

    def __init__(self, parent: LSegModelTester):
        self.parent = parent

    def prepare_config_and_inputs_for_common(self):
        config, _, input_ids, attention_mask = self.parent.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class LSegModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LSegModel, LSegForSemanticSegmentation)
    pipeline_model_mapping = {}
    # The text tower's token embeddings belong to a frozen CLIP; LSeg never resizes them.
    test_resize_embeddings = False
    _is_composite = True
    # The labels are a second input beside the images, which every forward needs.
    additional_model_inputs = ["input_ids"]

    def setUp(self):
        self.model_tester = LSegModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=LSegConfig, has_text_modality=False, common_properties=[]
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if return_labels and model_class is LSegForSemanticSegmentation:
            tester = self.model_tester
            inputs_dict["labels"] = torch.zeros(
                tester.batch_size, tester.image_size, tester.image_size, dtype=torch.long
            )
        return inputs_dict

    def test_model_get_set_embeddings(self):
        # An image model: as for transformers' DPT and ViT, the input embedding is the patch embedding, not a
        # token embedding, and there is no output embedding.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIs(model.get_input_embeddings(), model.base_model.dpt.embeddings.patch_embeddings)
            self.assertIsNone(model.get_output_embeddings())

    def _for_classes(self, test, model_classes, **tester_attributes):
        """Run a common test on some of the model classes, with extra attributes on the model tester."""
        all_model_classes = self.all_model_classes
        self.all_model_classes = model_classes
        for name, value in tester_attributes.items():
            setattr(self.model_tester, name, value)
        try:
            test()
        finally:
            self.all_model_classes = all_model_classes
            for name in tester_attributes:
                delattr(self.model_tester, name)

    def test_attention_outputs(self):
        # With output_hidden_states, the segmentation model returns two kinds: the ViT states and the pixel embeddings.
        self._for_classes(super().test_attention_outputs, (LSegModel,), num_hidden_states_types=1)
        self._for_classes(super().test_attention_outputs, (LSegForSemanticSegmentation,), num_hidden_states_types=2)

    # Only the segmentation model has a loss to train on.
    def test_training(self):
        self._for_classes(super().test_training, (LSegForSemanticSegmentation,))

    def test_training_gradient_checkpointing(self):
        self._for_classes(super().test_training_gradient_checkpointing, (LSegForSemanticSegmentation,))

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self._for_classes(
            super().test_training_gradient_checkpointing_use_reentrant_false, (LSegForSemanticSegmentation,)
        )

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        self._for_classes(
            super().test_training_gradient_checkpointing_use_reentrant_true, (LSegForSemanticSegmentation,)
        )

    def test_config(self):
        self.config_tester.run_common_tests()
