"""Triton model configurations (``config.pbtxt``) read and written as Triton's own
``ModelConfig`` protobuf (``model_config.proto``, as tritonclient ships it), through protobuf's
``text_format``: a value is set on a parsed message, never substituted into text."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
KIND_CPU = model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
KIND_GPU = model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU


def parse_model_config(text: str, source: str = "config.pbtxt") -> ModelConfig:
    """``text`` as a ``ModelConfig``.

    Raises:
        ValueError: it is not a valid model configuration (names ``source`` and the error).
    """
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{source}: not a Triton model configuration: {exc}") from None


def read_model_config(path: Path) -> ModelConfig:
    """The ``ModelConfig`` of the file ``path``."""
    return parse_model_config(path.read_text(), str(path))


def write_model_config(path: Path, config: ModelConfig, header: str = "") -> None:
    """Write ``config`` to ``path`` in text format, after ``header`` comment lines."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comments + text_format.MessageToString(config))


def set_string_parameter(config: ModelConfig, key: str, value: str) -> bool:
    """Set the config parameter ``key`` to ``value`` where ``config`` has it; whether it did."""
    if key not in config.parameters:
        return False
    config.parameters[key].string_value = value
    return True


def set_instance_group(
    config: ModelConfig, *, kind: str, count: int, gpus: list[int] | None = None
) -> None:
    """Replace ``config``'s instance groups by one: ``count`` instances of ``kind`` ("cpu" or
    "gpu"), per GPU of ``gpus`` for a GPU group."""
    del config.instance_group[:]
    group = config.instance_group.add(count=count, kind=KIND_GPU if kind == "gpu" else KIND_CPU)
    if kind == "gpu":
        group.gpus.extend(gpus or [])


def ensemble_steps(config: ModelConfig) -> list[str]:
    """The models an ensemble's steps call (empty for any other model)."""
    return [step.model_name for step in config.ensemble_scheduling.step]
