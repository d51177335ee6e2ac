"""Tests of the ``nfm`` command-line dispatcher."""

from __future__ import annotations

import pytest

from nfm import cli


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_every_command_module_provides_the_protocol():
    import importlib

    for module_name, _ in cli.COMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.configure_parser) and callable(module.run)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], "train"), (["--epochs", "1"], "train"), (["-q"], "train"), (["tabular"], "tabular")],
)
def test_default_command_is_inserted_only_when_no_command_given(monkeypatch, argv, expected):
    seen = {}

    def fake_run(args):
        seen["command"] = args.command
        return 0

    import importlib

    module = importlib.import_module(cli.COMMANDS[expected][0])
    monkeypatch.setattr(module, "run", fake_run)
    assert cli.main(argv) == 0
    assert seen["command"] == expected


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["train", "--no-such-option"])
    assert excinfo.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err
