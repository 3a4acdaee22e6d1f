"""A saved LSeg folder loads through the Auto classes as remote code, in a process that cannot import us."""

import json

import torch
from tests.isolation import load_with_auto_classes
from tests.modeling.test_lseg_model import label_ids, pixels, tiny_lseg_config

from modeling_lseg import LSegForSemanticSegmentation


def test_auto_classes_load_the_saved_code_offline_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = LSegForSemanticSegmentation(tiny_lseg_config(arch_option=1, block_depth=2)).eval()
    model.save_pretrained(tmp_path / "model")
    files = {path.name for path in (tmp_path / "model").iterdir()}
    assert files == {"config.json", "model.safetensors", "configuration_lseg.py", "modeling_lseg.py"}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_lseg.LSegConfig",
        "AutoModel": "modeling_lseg.LSegForSemanticSegmentation",
        "AutoModelForSemanticSegmentation": "modeling_lseg.LSegForSemanticSegmentation",
    }
    # Two non-square images, one not a multiple of 32, so the padding path runs in the copied code too.
    inputs = {"pixel_values": pixels(2, 64, 80), "input_ids": label_ids(3)}
    with torch.no_grad():
        expected = model(**inputs).logits
    result = load_with_auto_classes(
        tmp_path / "model",
        inputs,
        expected,
        tmp_path,
        "[type(config).__name__, config.arch_option, config.dpt_config.layer_norm_eps]",
    )
    assert result["config"] == ["LSegConfig", 1, 1e-6]
    for auto in ("AutoModel", "AutoModelForSemanticSegmentation"):
        name, module, difference = result[auto]
        assert name == "LSegForSemanticSegmentation"
        assert module.startswith("transformers_modules.")  # the copied code, not our package
        assert difference == 0.0
