"""The launcher's pure parts: rendering the model repository, ports, finding the server and its
Python stub. No server is started here (tests/functional/test_server.py does that)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bgblur.device import cuda_device_count
from bgblur.models.registry import model_names
from bgblur.server.launcher import (
    DIRECT_MODELS,
    MODEL_REPOSITORY,
    PYTHON_MODELS,
    SEGMENTATION_BATCH_LIMIT,
    VIDEO_MODELS,
    ServerStartError,
    TritonServer,
    doubling_batch_sizes,
    free_port,
    instance_counts_for,
    parse_key_values,
    prepare_backends,
    render_model_repository,
    segmentation_preferred_batch_sizes,
    tritonserver_home,
)

KIND_CPU = model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
KIND_GPU = model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def read_config(repository: Path, model: str) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt as Triton does (protobuf text format): a syntax error fails here."""
    text = (repository / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def parameter(config: model_config_pb2.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value


class TestRenderModelRepository:
    def test_returns_the_destination_holding_every_model(self, tmp_path: Path) -> None:
        destination = tmp_path / "repo"
        result = render_model_repository(destination, device="cpu", gpus=[])
        assert result == destination
        assert {p.name for p in destination.iterdir()} == {
            p.name
            for p in MODEL_REPOSITORY.iterdir()
            if p.name != "__pycache__" and p.name not in DIRECT_MODELS  # opt-in
        }

    def test_cpu_gives_each_python_model_one_kind_cpu_instance(self, tmp_path: Path) -> None:
        repository = render_model_repository(tmp_path / "repo", device="cpu", gpus=[])
        for model in PYTHON_MODELS:
            groups = read_config(repository, model).instance_group
            assert len(groups) == 1, model
            assert groups[0].kind == KIND_CPU
            assert groups[0].count == 1
            assert list(groups[0].gpus) == []

    @pytest.mark.parametrize("gpus", [[0], [0, 2], [0, 1, 2, 3, 4, 5, 6, 7]])
    def test_gpu_gives_each_python_model_one_kind_gpu_instance_per_listed_gpu(
        self, tmp_path: Path, gpus: list[int]
    ) -> None:
        repository = render_model_repository(tmp_path / "repo", device="gpu", gpus=gpus)
        for model in PYTHON_MODELS:
            groups = read_config(repository, model).instance_group
            assert len(groups) == 1, model
            assert groups[0].kind == KIND_GPU
            assert groups[0].count == 1
            assert list(groups[0].gpus) == gpus

    @pytest.mark.parametrize("device", ["cpu", "gpu"], ids=["render_cpu", "render_gpu"])
    def test_instance_counts_per_model(self, tmp_path: Path, device: str) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device=device, gpus=[0], instance_counts={"postprocess": 3}
        )
        counts = {m: read_config(repository, m).instance_group[0].count for m in PYTHON_MODELS}
        assert counts == {m: 3 if m == "postprocess" else 1 for m in PYTHON_MODELS}
        assert {"preprocess", "segmentation", "postprocess"} <= set(counts)

    def test_queue_delay_override(self, tmp_path: Path) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device="cpu", gpus=[], queue_delay_us=0
        )
        batched = [
            m
            for m in PYTHON_MODELS
            if read_config(MODEL_REPOSITORY, m).HasField("dynamic_batching")
        ]
        assert {"preprocess", "segmentation", "postprocess"} <= set(batched)
        for model in batched:
            config = read_config(repository, model)
            assert config.dynamic_batching.max_queue_delay_microseconds == 0, model
            source = read_config(MODEL_REPOSITORY, model)
            assert source.dynamic_batching.max_queue_delay_microseconds > 0, model
        for model in set(PYTHON_MODELS) - set(batched):  # other schedulers: left as they are
            assert read_config(repository, model).HasField("dynamic_batching") is False, model
        with pytest.raises(ValueError, match="queue_delay_us must be >= 0"):
            render_model_repository(tmp_path / "r2", device="cpu", gpus=[], queue_delay_us=-1)

    def test_model_parameters_override_every_model_that_has_the_key(self, tmp_path: Path) -> None:
        repository = render_model_repository(
            tmp_path / "repo",
            device="cpu",
            gpus=[],
            model_parameters={"resize_interpolation": "area", "blur_working_size": "320x180"},
        )
        assert parameter(read_config(MODEL_REPOSITORY, "preprocess"), "resize_interpolation") == (
            "auto"
        )
        assert parameter(read_config(repository, "preprocess"), "resize_interpolation") == "area"
        assert parameter(read_config(repository, "postprocess"), "blur_working_size") == "320x180"
        # Untouched keys keep the repository's values.
        for model in ("preprocess", "segmentation"):
            expected = parameter(read_config(MODEL_REPOSITORY, model), "segmentation_model")
            assert parameter(read_config(repository, model), "segmentation_model") == expected

    def test_model_parameters_reject_unknown_keys(self, tmp_path: Path) -> None:
        destination = tmp_path / "repo"
        with pytest.raises(ValueError, match="no model has a config parameter 'no_such_key'"):
            render_model_repository(
                destination, device="cpu", gpus=[], model_parameters={"no_such_key": "1"}
            )
        assert not destination.exists()

    def test_a_value_is_set_on_the_parsed_config_not_spliced_into_text(
        self, tmp_path: Path
    ) -> None:
        value = 'area" } ] instance_group [ { kind: KIND_GPU } ] x'
        repository = render_model_repository(
            tmp_path / "repo",
            device="cpu",
            gpus=[],
            model_parameters={"resize_interpolation": value},
        )
        config = read_config(repository, "preprocess")
        assert parameter(config, "resize_interpolation") == value
        assert [group.kind for group in config.instance_group] == [KIND_CPU]

    def test_parse_key_values(self) -> None:
        assert parse_key_values(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
        with pytest.raises(ValueError, match="expected KEY=VALUE, got 'oops'"):
            parse_key_values(["oops"])

    @pytest.mark.parametrize("counts", [{"postprocess": 0}, {"background_blur": 2}, {"x": 1}])
    def test_instance_counts_reject_bad_counts_and_models(
        self, tmp_path: Path, counts: dict[str, int]
    ) -> None:
        destination = tmp_path / "repo"
        with pytest.raises(ValueError, match="instance_counts takes counts >= 1 for preprocess"):
            render_model_repository(destination, device="cpu", gpus=[], instance_counts=counts)
        assert not destination.exists()

    # ids: a bare "gpu" id would be read as the gpu marker by conftest and skipped without CUDA
    @pytest.mark.parametrize("device", ["cpu", "gpu"], ids=["render_cpu", "render_gpu"])
    def test_the_ensemble_config_is_copied_verbatim(self, tmp_path: Path, device: str) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device=device, gpus=[0], segmentation_model="fixed_ellipse"
        )
        source = MODEL_REPOSITORY / "background_blur" / "config.pbtxt"
        assert (repository / "background_blur" / "config.pbtxt").read_bytes() == (
            source.read_bytes()
        )
        assert list(read_config(repository, "background_blur").instance_group) == []

    def test_without_override_the_repository_network_is_kept(self, tmp_path: Path) -> None:
        repository = render_model_repository(tmp_path / "repo", device="cpu", gpus=[])
        for model in ("preprocess", "segmentation"):
            expected = parameter(read_config(MODEL_REPOSITORY, model), "segmentation_model")
            assert parameter(read_config(repository, model), "segmentation_model") == expected

    @pytest.mark.parametrize("name", model_names())
    def test_segmentation_model_override_rewrites_preprocess_and_segmentation(
        self, tmp_path: Path, name: str
    ) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device="gpu", gpus=[1], segmentation_model=name
        )
        for model in ("preprocess", "segmentation"):
            rendered = read_config(repository, model)
            source = read_config(MODEL_REPOSITORY, model)
            assert parameter(rendered, "segmentation_model") == name
            # Everything else is as in the source, plus the instance group.
            rendered.parameters["segmentation_model"].string_value = parameter(
                source, "segmentation_model"
            )
            del rendered.instance_group[:]
            assert rendered == source, model
        assert read_config(repository, "postprocess").parameters == (
            read_config(MODEL_REPOSITORY, "postprocess").parameters
        )

    @pytest.mark.parametrize("name", ["nope", "", "Fixed_Ellipse"])
    def test_segmentation_model_override_rejects_unknown_names_before_copying(
        self, tmp_path: Path, name: str
    ) -> None:
        destination = tmp_path / "repo"
        with pytest.raises(
            ValueError, match=f"unknown segmentation model '{name}'; known: "
        ) as info:
            render_model_repository(destination, device="cpu", gpus=[], segmentation_model=name)
        assert str(info.value).endswith(", ".join(model_names()))
        assert not destination.exists()

    def test_the_source_tree_is_untouched(self, tmp_path: Path) -> None:
        before = tree_digest(MODEL_REPOSITORY)
        render_model_repository(
            tmp_path / "a", device="gpu", gpus=[0, 1], segmentation_model="fixed_ellipse"
        )
        render_model_repository(tmp_path / "b", device="cpu", gpus=[])
        assert tree_digest(MODEL_REPOSITORY) == before

    def test_model_py_files_and_version_folders_are_copied_verbatim(self, tmp_path: Path) -> None:
        repository = render_model_repository(tmp_path / "repo", device="cpu", gpus=[])
        for model in PYTHON_MODELS:
            copied = repository / model / "1" / "model.py"
            assert copied.read_bytes() == (MODEL_REPOSITORY / model / "1" / "model.py").read_bytes()
        source, rendered = tree_digest(MODEL_REPOSITORY), tree_digest(repository)
        direct = {path for path in source if path.split("/")[0] in DIRECT_MODELS}
        assert direct, "the direct model is in the repository"
        assert set(rendered) == set(source) - direct  # opt-in: left out by default
        changed = {path for path in rendered if source[path] != rendered[path]}
        assert changed == {f"{model}/config.pbtxt" for model in (*PYTHON_MODELS, *VIDEO_MODELS)}

    def test_the_direct_model_is_rendered_when_asked_for(self, tmp_path: Path) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device="cpu", gpus=[], direct_model=True
        )
        source, rendered = tree_digest(MODEL_REPOSITORY), tree_digest(repository)
        assert set(rendered) == set(source)
        for model in DIRECT_MODELS:
            (group,) = read_config(repository, model).instance_group
            assert group.kind == KIND_CPU and group.count == 1

    def test_the_video_and_direct_models_get_an_instance_group(self, tmp_path: Path) -> None:
        repository = render_model_repository(
            tmp_path / "repo", device="gpu", gpus=[0, 1], direct_model=True
        )
        for model in (*VIDEO_MODELS, *DIRECT_MODELS):
            groups = read_config(repository, model).instance_group
            assert len(groups) == 1 and groups[0].count == 1 and list(groups[0].gpus) == [0, 1]

    def test_pycache_folders_are_not_copied(self, tmp_path: Path) -> None:
        source = tmp_path / "source"
        shutil.copytree(MODEL_REPOSITORY, source)
        for model in PYTHON_MODELS:
            cache = source / model / "1" / "__pycache__"
            cache.mkdir(exist_ok=True)
            (cache / "model.cpython-311.pyc").write_bytes(b"stale")
        repository = render_model_repository(
            tmp_path / "repo", device="cpu", gpus=[], source=source
        )
        assert not list(repository.rglob("__pycache__"))
        assert (repository / "preprocess" / "1" / "model.py").exists()

    def test_an_existing_destination_is_not_overwritten(self, tmp_path: Path) -> None:
        destination = tmp_path / "repo"
        destination.mkdir()
        (destination / "keep.txt").write_text("mine")
        with pytest.raises(FileExistsError):
            render_model_repository(destination, device="cpu", gpus=[])
        assert (destination / "keep.txt").read_text() == "mine"


class TestSegmentationBatch:
    """``segmentation_batch``: segmentation batches past a request's size, the rest as it was."""

    @pytest.mark.parametrize(
        ("max_batch", "sizes"),
        [(1, (1,)), (8, (1, 2, 4, 8)), (24, (1, 2, 4, 8, 16, 24)), (64, (1, 2, 4, 8, 16, 32, 64))],
    )
    def test_doubling_batch_sizes(self, max_batch: int, sizes: tuple[int, ...]) -> None:
        assert doubling_batch_sizes(max_batch) == sizes
        with pytest.raises(ValueError, match="max_batch must be >= 1"):
            doubling_batch_sizes(0)

    def test_preferred_sizes_start_at_the_request_batch(self) -> None:
        assert segmentation_preferred_batch_sizes(64, 8) == (8, 16, 32, 64)
        assert segmentation_preferred_batch_sizes(24, 8) == (8, 16, 24)
        assert segmentation_preferred_batch_sizes(8, 8) == (8,)

    @pytest.mark.parametrize("device", ["cpu", "gpu"], ids=["render_cpu", "render_gpu"])
    def test_segmentation_64_batches_and_nothing_else_changes(
        self, tmp_path: Path, device: str
    ) -> None:
        plain = render_model_repository(tmp_path / "plain", device=device, gpus=[0])
        repository = render_model_repository(
            tmp_path / "repo", device=device, gpus=[0], segmentation_batch=64
        )
        config = read_config(repository, "segmentation")
        assert config.max_batch_size == 64
        assert parameter(config, "cuda_graph_batch_sizes") == "1,2,4,8,16,32,64"
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
        # the queue delay and the overload policy stay the repository's
        source = read_config(MODEL_REPOSITORY, "segmentation")
        assert config.dynamic_batching.max_queue_delay_microseconds == (
            source.dynamic_batching.max_queue_delay_microseconds
        )
        assert config.dynamic_batching.default_queue_policy == (
            source.dynamic_batching.default_queue_policy
        )
        # requests stay at most the ensemble's batch; every other model is as without it
        assert read_config(repository, "background_blur").max_batch_size == 8
        models = {p.parent.name for p in repository.glob("*/config.pbtxt")} - {"segmentation"}
        assert {"preprocess", "postprocess", "background_blur"} <= models
        for model in sorted(models):
            assert read_config(repository, model) == read_config(plain, model), model

    def test_the_rendered_ensemble_is_one_triton_accepts(self, tmp_path: Path) -> None:
        from bgblur.server.deploy import check_repository

        repository = render_model_repository(
            tmp_path / "repo", device="gpu", gpus=[0], segmentation_batch=16
        )
        configs = check_repository(repository)  # every step batches at least the ensemble's
        assert configs["segmentation"].max_batch_size == 16

    def test_segmentation_queue_delay_alone(self, tmp_path: Path) -> None:
        repository = render_model_repository(
            tmp_path / "repo",
            device="cpu",
            gpus=[],
            queue_delay_us=100,
            segmentation_queue_delay_us=2000,
        )
        delays = {
            m: read_config(repository, m).dynamic_batching.max_queue_delay_microseconds
            for m in PYTHON_MODELS
        }
        assert (delays["segmentation"], delays["preprocess"], delays["postprocess"]) == (
            2000,
            100,
            100,
        )
        with pytest.raises(ValueError, match="segmentation_queue_delay_us must be >= 0"):
            render_model_repository(
                tmp_path / "r2", device="cpu", gpus=[], segmentation_queue_delay_us=-1
            )

    @pytest.mark.parametrize("batch", [0, 4, 7, SEGMENTATION_BATCH_LIMIT + 1])
    def test_a_batch_below_the_ensembles_or_above_the_limit_is_refused(
        self, tmp_path: Path, batch: int
    ) -> None:
        destination = tmp_path / "repo"
        with pytest.raises(
            ValueError,
            match=rf"segmentation_batch must be between the max_batch_size of the ensembles "
            rf"that call segmentation \(background_blur 8[^)]*\) and "
            rf"{SEGMENTATION_BATCH_LIMIT}, got {batch}",
        ):
            render_model_repository(destination, device="gpu", gpus=[0], segmentation_batch=batch)
        assert not destination.exists()

    def test_the_server_options_and_command_line_carry_it(self) -> None:
        server = TritonServer(device="cpu", segmentation_batch=32, segmentation_queue_delay_us=0)
        assert server.options.segmentation_batch == 32
        assert server.options.segmentation_queue_delay_us == 0
        assert server.options.mps is False


class TestFreePort:
    def test_free_port_can_be_bound_on_localhost(self) -> None:
        ports = {free_port() for _ in range(3)}
        for port in ports:
            assert 1024 <= port <= 65535
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))


class TestTritonserverHome:
    def test_tritonserver_home_prefers_the_environment_variable(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("TRITONSERVER_HOME", str(tmp_path))
        monkeypatch.setitem(sys.modules, "pytriton", None)
        assert tritonserver_home() == tmp_path

    def test_tritonserver_home_falls_back_to_the_server_in_the_pytriton_wheel(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pytest.importorskip("pytriton")
        monkeypatch.delenv("TRITONSERVER_HOME", raising=False)
        home = tritonserver_home()
        assert (home / "bin" / "tritonserver").is_file()
        assert (home / "python_backend_stubs").is_dir()

    @pytest.mark.parametrize("env", [None, ""])
    def test_tritonserver_home_raises_server_start_error_without_pytriton(
        self, monkeypatch: pytest.MonkeyPatch, env: str | None
    ) -> None:
        if env is None:
            monkeypatch.delenv("TRITONSERVER_HOME", raising=False)
        else:
            monkeypatch.setenv("TRITONSERVER_HOME", env)
        monkeypatch.setitem(sys.modules, "pytriton", None)  # import pytriton -> ImportError
        with pytest.raises(
            ServerStartError, match="no Triton server found: install nvidia-pytriton"
        ):
            tritonserver_home()


class TestPrepareBackends:
    @staticmethod
    def fake_home(root: Path, versions: tuple[str, ...] = (PY_VERSION, "3.9")) -> Path:
        home = root / "tritonserver"
        (home / "backends" / "python").mkdir(parents=True)
        (home / "backends" / "python" / "libtriton_python.so").write_bytes(b"backend")
        for version in versions:
            stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
            stub.parent.mkdir(parents=True)
            stub.write_bytes(f"stub for {version}".encode())
            stub.chmod(0o644)
        return home

    def test_copies_this_pythons_stub_next_to_the_python_backend(self, tmp_path: Path) -> None:
        home = self.fake_home(tmp_path)
        assert prepare_backends(home) == home / "backends"
        stub = home / "backends" / "python" / "triton_python_backend_stub"
        assert stub.read_bytes() == f"stub for {PY_VERSION}".encode()
        assert stat.S_IMODE(stub.stat().st_mode) == 0o755
        assert os.access(stub, os.X_OK)

    def test_an_existing_stub_is_left_alone(self, tmp_path: Path) -> None:
        home = self.fake_home(tmp_path)
        stub = home / "backends" / "python" / "triton_python_backend_stub"
        stub.write_bytes(b"already here")
        prepare_backends(home)
        assert stub.read_bytes() == b"already here"

    def test_raises_server_start_error_without_a_stub_for_this_python(self, tmp_path: Path) -> None:
        home = self.fake_home(tmp_path, versions=("3.9",))
        with pytest.raises(
            ServerStartError, match=f"no Python backend stub for Python {PY_VERSION} in {home}"
        ):
            prepare_backends(home)
        assert not (home / "backends" / "python" / "triton_python_backend_stub").exists()


class TestTritonServerArguments:
    @pytest.mark.parametrize(
        ("device", "asked", "direct", "counts"),
        [
            ("cpu", None, False, {}),
            ("cpu", {"postprocess": 2}, False, {"postprocess": 2}),
            ("cpu", None, True, {"background_blur_direct": 2}),
            ("gpu", None, False, {"postprocess": 2}),
            ("gpu", None, True, {"postprocess": 2, "background_blur_direct": 2}),
            (
                "gpu",
                {"postprocess": 1, "background_blur_direct": 1},
                True,
                {"postprocess": 1, "background_blur_direct": 1},
            ),
        ],
    )
    def test_instance_counts_default_and_asked(
        self,
        device: str,
        asked: dict[str, int] | None,
        direct: bool,
        counts: dict[str, int],
    ) -> None:
        assert instance_counts_for(device, asked, direct_model=direct) == counts

    @pytest.mark.parametrize("device", ["GPU", "cuda", ""])
    def test_raises_value_error_for_an_unknown_device(self, device: str) -> None:
        with pytest.raises(ValueError, match=f"device must be auto, cpu or gpu, got '{device}'"):
            TritonServer(device=device)

    @pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a usable GPU")
    def test_raises_server_start_error_when_gpu_is_asked_for_without_one(self) -> None:
        with pytest.raises(ServerStartError, match="--device gpu: no CUDA GPU usable by CuPy"):
            TritonServer(device="gpu")
