"""transformers' own processor common tests (`ProcessorTesterMixin`) on `OVSegProcessor`.

The mixin comes from the sdist of the installed release (`tests/transformers_common.py`). The processor's components
are the ones `training.models.presets` builds: `OVSegImageProcessor` and the bundled OpenAI CLIP tokenizer (no
download).
"""

import unittest

from tests.transformers_common import import_common

from processing.processing_ovseg import OVSegProcessor
from processing.text_prompts_ovseg import RAW_NAME_TEMPLATE
from training.models.presets import catseg_processor

processing_common = import_common("test_processing_common")


class OVSegProcessorTest(processing_common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = OVSegProcessor

    @classmethod
    def _setup_image_processor(cls):
        return catseg_processor(image_size=64).image_processor

    @classmethod
    def _setup_tokenizer(cls):
        return catseg_processor(image_size=64).tokenizer

    @classmethod
    def setUpClass(cls):
        # `save_for_hub` (other tests in this session) registers the processor class for AutoProcessor, which makes
        # every later save write an `auto_map`; the common tests compare saved and in-memory dicts without it.
        cls._registered_auto_class = cls.processor_class._auto_class
        cls.processor_class._auto_class = None
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        cls.processor_class._auto_class = cls._registered_auto_class
        super().tearDownClass()

    @staticmethod
    def prepare_processor_dict():
        # Raw class names (LSeg's setting): several common tests compare the processor's text output with the bare
        # tokenizer's on the same strings. CAT-Seg's template is tested in processing/test_processing_processor.py.
        return {"prompt_templates": [RAW_NAME_TEMPLATE]}  # the processor stores its templates as a list

    def prepare_text_inputs(self, batch_size=None, modalities=None):
        # The text is one vocabulary of distinct class names shared by every image of a call, never one prompt per
        # image; a bare string is refused as a likely mistake (`validate_vocabulary`). So the mixin's sentences
        # become vocabularies: one class name, or `batch_size` distinct ones of different lengths.
        names = ["lower newer", "upper older longer string"]
        if batch_size is None:
            return names[:1]
        return (names + [f"class {index}" for index in range(2, batch_size)])[:batch_size]

    @unittest.skip(
        "Samples with and without images in one batch do not apply: the text is one vocabulary shared by the whole "
        "batch, not one prompt per image."
    )
    def test_processor_text_has_no_visual(self):
        pass

    @unittest.skip(
        "prompt_templates and synonyms are a per-model default saved with the processor (CAT-Seg's template, LSeg's "
        "raw names) that one call may override (prompt_templates='imagenet'): the case this test's own docstring "
        "names as legitimate, and the one image processors follow for their settings."
    )
    def test_init_arguments_not_in_processor_kwargs(self):
        pass
