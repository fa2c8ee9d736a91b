from pathlib import Path

import pytest

from starserve.config import Settings, load_yaml, validate
from starserve.errors import StarserveError


class Example(Settings):
    num_instances: int = 2
    rate: float = 1.0


def test_validation_error_is_one_line_naming_source_and_field() -> None:
    with pytest.raises(StarserveError) as info:
        validate(Example, {"num_instances": "many"}, source="scenario.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("scenario.yaml: num_instances:")


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(StarserveError, match="colour"):
        validate(Example, {"colour": "red"})


def test_load_yaml_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(StarserveError, match="no such file"):
        load_yaml(Example, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_instances: [1,\n")
    with pytest.raises(StarserveError, match="not valid YAML"):
        load_yaml(Example, bad)
    good = tmp_path / "good.yaml"
    good.write_text("num_instances: 4\n")
    assert load_yaml(Example, good).num_instances == 4
