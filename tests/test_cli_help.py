"""Every flag of the command-line tools says what it does."""

import argparse

import pytest

from training import benchmark, fss, train


def help_text(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def undocumented_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [action.option_strings[0] for action in parser._actions if action.option_strings and not action.help]


def test_every_ovseg_train_flag_has_a_description(capsys):
    parser = argparse.ArgumentParser()
    train.add_config_arguments(parser)
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
