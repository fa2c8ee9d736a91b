import json

import pytest
from typer.testing import CliRunner

from starserve.cli.predictor import app
from starserve.errors import StarserveError

runner = CliRunner()


def test_help_lists_the_three_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("collect", "train", "eval"):
        assert name in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--data", "/nonexistent/dir"], "no such directory"),
        (["train", "--data", "/nonexistent/dir"], "no such directory"),
        (["eval", "--split", "nope"], "--split 'nope'"),
        (["eval", "--data", "x", "--prompts", "y"], "either --data or --prompts"),
    ],
)
def test_bad_input_is_a_one_line_user_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert isinstance(result.exception, StarserveError)
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)


def test_eval_on_a_directory_without_manifest_is_a_user_error(tmp_path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({}))
    result = runner.invoke(app, ["eval", "--data", str(tmp_path)])
    assert isinstance(result.exception, StarserveError)
    assert "manifest.json" in str(result.exception)
