"""transformers' own image-processor common tests (`ImageProcessingTestMixin`) on `OVSegImageProcessor`.

The mixin comes from the sdist of the installed release (`tests/transformers_common.py`). Its tests that read images
from the Hub need the network and are skipped with that reason.
"""

import unittest

from tests.transformers_common import import_common

from processing.image_processing_ovseg import OVSegImageProcessor

image_processing_common = import_common("test_image_processing_common")


class OVSegImageProcessingTester(image_processing_common.ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 32, "width": 32})
        kwargs.setdefault("num_labels", 4)  # the post-processing tests build logits with this many classes
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # The mixin looks the class up by the test folder's model name; ours is remote code, not in that registry.
        return {"pil": OVSegImageProcessor}

    def expected_output_image_shape(self, images):
        return self.num_channels, self.size["height"], self.size["width"]


class OVSegImageProcessingTest(
    image_processing_common.ImageProcessingTestMixin,
    image_processing_common.PostProcessSemanticSegmentationTestMixin,
    unittest.TestCase,
):
    image_processor_tester_class = OVSegImageProcessingTester

    @unittest.skip("Both models take RGB: the processor converts every image to 3 channels by design.")
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip("torchvision is not a dependency of this project; the processor has the PIL backend only.")
    def test_new_models_require_torchvision_backend(self):
        pass
