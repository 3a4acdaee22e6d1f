"""Every flag of the command-line tools says what it does."""

import argparse

import pytest

from training.commands import benchmark, fss, train
from training.engine import config


def help_text(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def undocumented_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [action.option_strings[0] for action in parser._actions if action.option_strings and not action.help]


def test_every_ovseg_train_flag_has_a_description(capsys):
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser)
    assert undocumented_flags(parser) == []
    text = " ".join(help_text(train.main, capsys).split())
    assert "`IMAGES_DIR,MASKS_DIR`: two folders whose images and masks pair up by file name" in text
    assert "`null` drops a recipe's preset, for your own data" in text
    assert "--learning-rate VALUE" in text and "(default: " in text


def test_benchmark_and_fss_document_their_data_layout(capsys):
    text = " ".join(help_text(benchmark.main, capsys).split())
    assert "--reduce-labels KEY" in text and "raw ADE20K SceneParsing" in text
    text = " ".join(help_text(fss.main, capsys).split())
    assert "<root>/<class>/<n>.jpg with masks <n>.png" in text


# Flags of other programs that messages name: accelerate launch / torchrun, pip and hf download.
FOREIGN_FLAGS = {
    "--cpu", "--multi_gpu", "--num_processes", "--mixed_precision", "--nproc_per_node", "--nnodes", "--standalone",
    "--master_addr", "--master_port", "--mpirun_hostfile", "--extra-index-url", "--local-dir",
}  # fmt: skip


def mentioned_flags(module) -> set[str]:
    """Every `--flag` inside a string literal (f-strings included) of `module`'s source."""
    import ast
    import inspect
    import re

    return {
        flag
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", node.value)
    }


def test_every_flag_that_a_message_or_help_names_exists(capsys):
    """A hint such as "pass --reduce-labels a150" names a flag of the very tool that prints it."""
    import re

    from training import apps, commands, conversion, data, engine, evaluation, hub, models
    from training.quickstart import pipeline as quickstart
    from training.commands import catseg_convert, convert, demo, export, lseg_convert, prepare, push, segment
    from training.data.families import ade20k, coco_stuff, pascal_context, pascal_voc

    def flags(*mains):
        return {flag for main in mains for flag in re.findall(r"--[a-z][a-z0-9-]*", help_text(main, capsys))}

    def labelling_help(argv):
        return segment.main([*argv, "--dataset=any"])

    segmenting, evaluate = flags(segment.main, convert.main, labelling_help), flags(benchmark.main)
    training = flags(train.main)
    official_lseg_script = {"--dataset", "--nshot"}  # test_lseg_zs.py's, which fss.py's docstring quotes
    tools = {  # a module's messages may name the flags of the tools they are shown by or refer to
        commands.segment: segmenting, commands.convert: segmenting, models.loading: segmenting,
        data.labelling: segmenting, engine.config: training, engine.loop: training, commands.train: training,
        commands.benchmark: evaluate, evaluation.benchmark: evaluate,
        commands.fss: flags(fss.main) | official_lseg_script, evaluation.fss: flags(fss.main) | official_lseg_script,
        commands.push: flags(push.main), hub.push: flags(push.main),
        commands.demo: flags(demo.main) | segmenting, apps.demo: flags(demo.main) | segmenting,
        commands.prepare: flags(prepare.main) | evaluate, data.prepare: flags(prepare.main) | evaluate,
        **{family: flags(prepare.main) | evaluate for family in (ade20k, coco_stuff, pascal_context, pascal_voc)},
        commands.export: flags(export.main), apps.export: flags(export.main),
        quickstart: flags(quickstart.main),
        commands.catseg_convert: flags(catseg_convert.main), conversion.catseg: flags(catseg_convert.main),
        commands.lseg_convert: flags(lseg_convert.main), conversion.lseg: flags(lseg_convert.main),
    }  # fmt: skip
    unknown = {
        module.__name__: sorted(mentioned_flags(module) - known - FOREIGN_FLAGS - {"--help", "--field-name"})
        for module, known in tools.items()
    }
    assert {name: found for name, found in unknown.items() if found} == {}


def test_mask_hints_name_the_flags_of_the_tool_that_loaded_the_data(tmp_path, capsys):
    import numpy as np
    from tests.training.evaluation.test_benchmark_protocol import class_lists, label_dataset

    from training.data.sources import DataError, load_segmentation_data

    names = class_lists(tmp_path / "names", ade150=150)
    source = label_dataset(tmp_path / "a150", [np.array([[0, 150], [150, 3]], np.uint8)])
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--model", "absent", "--data", f"a150={source}", "--class-names-dir", str(names)])
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and "if 150 marks unlabelled pixels, pass --ignore-index a150=150 (now 255)" in err
    )
    assert "if 0 means 'other' and classes are numbered from 1, pass --reduce-labels a150" in err
    data = load_segmentation_data(source, class_names=[f"c{i}" for i in range(150)])
    with pytest.raises(DataError, match=r"set reduce_labels=true \(--reduce-labels true\)"):
        list(data.examples())
