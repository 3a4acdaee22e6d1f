"""A saved CAT-Seg folder loads through the Auto classes as remote code, in a process that cannot import us."""

import json

import torch
from isolation import run_isolated
from test_catseg_model import pixels, prompts
from tiny_models import tiny_catseg_config

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
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, tmp_path / "expected.pt")

    result = run_isolated(
        f"""
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation
        folder = {str(tmp_path / "model")!r}
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        report = {{"config": type(config).__name__, "image_size": config.image_size}}
        for auto in (AutoModel, AutoModelForSemanticSegmentation):
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                logits = model(**inputs).logits
            difference = (logits - expected).abs().max().item()
            report[auto.__name__] = [type(model).__name__, type(model).__module__, difference]
        print(json.dumps(report))
        """,
        tmp_path,
    )
    assert result["config"] == "CatSegConfig" and result["image_size"] == 64
    for auto in ("AutoModel", "AutoModelForSemanticSegmentation"):
        name, module, difference = result[auto]
        assert name == "CatSegForSemanticSegmentation"
        assert module.startswith("transformers_modules.")  # the copied code, not our package
        assert difference == 0.0
