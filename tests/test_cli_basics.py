"""The command line's shape: every command has --help, unknown commands fail cleanly."""

from click.testing import CliRunner

from porelab.cli import COMMANDS, main


def test_every_command_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_unknown_command_is_one_line_error():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output


def test_every_command_that_writes_an_output_has_overwrite():
    for name in ("segment", "train", "report", "simulate", "pseudolabel", "label", "degrade"):
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "--overwrite" in result.output, name
