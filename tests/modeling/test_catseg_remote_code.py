"""A saved CAT-Seg folder loads through the Auto classes as remote code, in a process that cannot import us."""

import json

import torch
from tests.isolation import load_with_auto_classes
from tests.modeling.test_catseg_model import pixels, prompts
from tests.tiny_models import tiny_catseg_config

from modeling_catseg import CatSegForSemanticSegmentation


def test_auto_classes_load_the_saved_code_offline_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config()).eval()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_catseg.CatSegConfig",
        "AutoModelForSemanticSegmentation": "modeling_catseg.CatSegForSemanticSegmentation",
        "AutoModel": "modeling_catseg.CatSegForSemanticSegmentation",
    }
    inputs = {"pixel_values": pixels(2), "input_ids": prompts(3)}
    with torch.no_grad():
        expected = model(**inputs).logits
    result = load_with_auto_classes(
        tmp_path / "model", inputs, expected, tmp_path, "[type(config).__name__, config.image_size]"
    )
    assert result["config"] == ["CatSegConfig", 64]
    for auto in ("AutoModel", "AutoModelForSemanticSegmentation"):
        name, module, difference = result[auto]
        assert name == "CatSegForSemanticSegmentation"
        assert module.startswith("transformers_modules.")  # the copied code, not our package
        assert difference == 0.0
