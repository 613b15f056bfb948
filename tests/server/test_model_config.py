"""bgblur.server.model_config: config.pbtxt through Triton's ModelConfig protobuf."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgblur.server.launcher import MODEL_REPOSITORY
from bgblur.server.model_config import (
    KIND_GPU,
    ensemble_steps,
    parse_model_config,
    read_model_config,
    set_instance_group,
    set_string_parameter,
    write_model_config,
)


def test_every_committed_config_parses() -> None:
    names = {p.parent.name: read_model_config(p) for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}
    assert {"background_blur", "preprocess", "segmentation", "postprocess"} <= set(names)
    for name, config in names.items():
        assert config.name == name


def test_the_ensemble_s_steps() -> None:
    config = read_model_config(MODEL_REPOSITORY / "background_blur" / "config.pbtxt")
    assert ensemble_steps(config) == ["preprocess", "segmentation", "postprocess"]
    assert ensemble_steps(read_model_config(MODEL_REPOSITORY / "preprocess" / "config.pbtxt")) == []


def test_a_bad_file_is_named() -> None:
    with pytest.raises(ValueError, match=r"x/config.pbtxt: not a Triton model configuration"):
        parse_model_config("name: 3 4 {", "x/config.pbtxt")


def test_edits_round_trip(tmp_path: Path) -> None:
    config = read_model_config(MODEL_REPOSITORY / "preprocess" / "config.pbtxt")
    assert set_string_parameter(config, "resize_interpolation", "area")
    assert not set_string_parameter(config, "no_such_parameter", "1")
    set_instance_group(config, kind="gpu", count=2, gpus=[0, 1])
    path = tmp_path / "config.pbtxt"
    write_model_config(path, config, "Rendered for a test.\nSecond line.")
    assert path.read_text().startswith("# Rendered for a test.\n# Second line.\n")
    again = read_model_config(path)
    assert again == config
    assert again.parameters["resize_interpolation"].string_value == "area"
    (group,) = again.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (KIND_GPU, 2, [0, 1])
