"""bgblur.server.deploy: the container's model repository, the engine cache, the server's
command line and the shared-memory estimate.

No Docker, TensorRT or GPU here: plans are placeholder files, and ``trtexec`` / ``nvidia-smi``
are stand-in scripts put first on PATH. They are real processes that bgblur.server.deploy starts and
that record what they were asked (argv, CUDA_VISIBLE_DEVICES) and write the plan file, as the
real trtexec does; whether a build ran is read from their log.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import get_model_spec
from bgblur.runtimes.tensorrt_build import EngineKey
from bgblur.server import deploy
from bgblur.server.deploy import (
    GpuInfo,
    build_engines,
    check_repository,
    container_admin_key,
    container_server_options,
    parse_size,
    python_models_max_batch,
    render_container_repository,
    shm_requirement,
    visible_gpus,
)
from bgblur.server.launcher import (
    MODEL_REPOSITORY,
    TritonServer,
    render_model_repository,
)

REPO = Path(__file__).resolve().parents[2]
TYPE_FP16 = model_config_pb2.DataType.TYPE_FP16
KIND_GPU = model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU
SHARED_MODELS = ("preprocess", "postprocess", "background_blur")
TRT = "10.8.0"


def read_config(repository: Path, model: str) -> model_config_pb2.ModelConfig:
    text = (repository / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def plan_name(model: str, sm: str = "90", trt: str = TRT, max_batch: int = 8) -> str:
    return f"{model}_sm{sm}_trt{trt}_b1-{max_batch}_fp16.plan"


def make_plan(folder: Path, model: str, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / plan_name(model, **kwargs)
    path.write_bytes(f"plan of {model} {kwargs}".encode())
    return path


def dims_compatible(a: list[int], b: list[int]) -> bool:
    """Triton's CompareDimsWithWildcard: same rank, each dim equal or -1 on either side."""
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------
# Stand-in tools
# --------------------------------------------------------------------------------------------


class FakeTools:
    """``trtexec`` and ``nvidia-smi`` scripts first on PATH, steered by environment variables."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "trtexec.log"
        self.monkeypatch = monkeypatch
        self._script(
            "trtexec",
            'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_TRT_CODE:-100800}] # trtexec"\n'
            'echo "${CUDA_VISIBLE_DEVICES:-unset}|$*" >> "$FAKE_TRTEXEC_LOG"\n'
            'if [ "$1" = "--help" ]; then exit 0; fi\n'
            'if [ -n "$FAKE_TRTEXEC_FAIL" ]; then echo "[E] parser error" >&2; exit 3; fi\n'
            'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";;'
            " esac; done\n",
        )
        self._script("nvidia-smi", 'printf "%b" "$FAKE_GPUS"\n')
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(self.log))
        self.gpus("0, GPU-aaaa, 9.0")

    def _script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    def gpus(self, *lines: str) -> None:
        self.monkeypatch.setenv("FAKE_GPUS", "".join(f"{line}\\n" for line in lines))

    def trt_version(self, code: int) -> None:
        self.monkeypatch.setenv("FAKE_TRT_CODE", str(code))

    def builds(self) -> list[tuple[str, str]]:
        """(CUDA_VISIBLE_DEVICES, argv) of every build trtexec was asked for (not --help)."""
        if not self.log.exists():
            return []
        runs = [line.split("|", 1) for line in self.log.read_text().splitlines()]
        return [(env, argv) for env, argv in runs if argv != "--help"]


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    return FakeTools(tmp_path, monkeypatch)


# --------------------------------------------------------------------------------------------
# The container's model repository
# --------------------------------------------------------------------------------------------


class TestRenderContainerRepository:
    def render(self, tmp_path: Path, model: str = "selfie_general", **kwargs) -> Path:
        plan = kwargs.pop("plan", None) or make_plan(tmp_path / "plans", model)
        return render_container_repository(
            tmp_path / "models",
            segmentation_model=model,
            plan_path_or_dir=plan,
            gpus=kwargs.pop("gpus", [0]),
            source=MODEL_REPOSITORY,
            **kwargs,
        )

    def test_every_config_parses_and_the_ensemble_wiring_checks(self, tmp_path: Path) -> None:
        repository = self.render(tmp_path)
        configs = check_repository(repository)
        # every model of the source but the opt-in one-hop model (the video model among them:
        # decoupled; it answers UNAVAILABLE where PyAV is missing)
        source = {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}
        assert set(configs) == source - {"background_blur_direct"}
        assert {"background_blur", "preprocess", "segmentation", "postprocess"} <= set(configs)
        assert "background_blur_video" in configs
        for name in configs:
            assert read_config(repository, name).name == name

    @pytest.mark.parametrize(
        "model", ["selfie_general", "selfie_landscape", "fixed_ellipse", "fcn_resnet101"]
    )
    def test_segmentation_is_a_plan_with_the_python_models_tensors(
        self, tmp_path: Path, model: str
    ) -> None:
        plan = make_plan(tmp_path / "plans", model)
        repository = self.render(tmp_path, model, plan=plan)
        python_seg = read_config(MODEL_REPOSITORY, "segmentation")
        seg = read_config(repository, "segmentation")
        assert seg.platform == "tensorrt_plan" and not seg.backend
        assert [(t.name, t.data_type) for t in seg.input] == [
            (t.name, t.data_type) for t in python_seg.input
        ]
        assert [(t.name, t.data_type) for t in seg.output] == [
            (t.name, t.data_type) for t in python_seg.output
        ]
        h, w = get_model_spec(model).input_hw
        assert list(seg.input[0].dims) == [3, h, w] and list(seg.output[0].dims) == [1, h, w]
        assert seg.max_batch_size == 8 and seg.dynamic_batching is not None
        assert [g.kind for g in seg.instance_group] == [KIND_GPU]
        version = repository / "segmentation" / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.plan"]  # no model.py
        assert (version / "model.plan").read_bytes() == plan.read_bytes()
        for name in ("preprocess", "segmentation"):
            parameters = read_config(repository, name).parameters
            assert parameters["segmentation_model"].string_value == model

    def test_intermediate_tensors_agree_in_dtype_and_dims(self, tmp_path: Path) -> None:
        repository = self.render(tmp_path, "selfie_landscape")
        pre, seg, post = (
            read_config(repository, m) for m in ("preprocess", "segmentation", "postprocess")
        )
        ensemble = read_config(repository, "background_blur")
        steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
        produced = {t.name: t for t in ensemble.input}  # the client's tensors (BACKGROUND)
        for model in (pre, seg, post):
            for own, tensor in steps[model.name].output_map.items():
                produced[tensor] = next(t for t in model.output if t.name == own)
        for model in (seg, post):
            for own, tensor in steps[model.name].input_map.items():
                assert tensor in produced, f"{model.name}.{own} <- {tensor}: nothing makes it"
                declared = next(t for t in model.input if t.name == own)
                assert declared.data_type == produced[tensor].data_type
                # [3, -1, -1] from preprocess meets [3, 144, 256]: accepted by Triton's
                # ensemble check (wildcards), equal at run time.
                assert dims_compatible(list(declared.dims), list(produced[tensor].dims))
        # The network tensors are fp16; postprocess takes the frames preprocess uploaded.
        assert produced["network_input"].data_type == TYPE_FP16
        assert produced["probability"].data_type == TYPE_FP16
        assert steps["postprocess"].input_map["FRAMES"] == "frames_on_device"
        assert steps["preprocess"].input_map["FRAMES"] == "FRAMES"

    def test_preprocess_postprocess_and_ensemble_are_the_embedded_servers(
        self, tmp_path: Path
    ) -> None:
        repository = self.render(tmp_path, "selfie_landscape", gpus=[0, 1])
        embedded = render_model_repository(
            tmp_path / "embedded", device="gpu", gpus=[0, 1], segmentation_model="selfie_landscape"
        )
        for model in SHARED_MODELS:
            for path in sorted((embedded / model).rglob("*")):
                if path.is_file():
                    twin = repository / path.relative_to(embedded)
                    assert twin.read_bytes() == path.read_bytes(), path.relative_to(embedded)
        for model in ("preprocess", "postprocess"):
            (group,) = read_config(repository, model).instance_group
            assert group.kind == KIND_GPU and list(group.gpus) == [0, 1]

    def test_one_plan_per_compute_capability(self, tmp_path: Path) -> None:
        plans = tmp_path / "plans"
        make_plan(plans, "selfie_general", sm="90")
        make_plan(plans, "selfie_general", sm="89")
        make_plan(plans, "selfie_general", sm="80")  # not asked for: not copied
        repository = self.render(
            tmp_path, plan=plans, compute_capabilities=[(9, 0), (8, 9), (9, 0)], trt_version=TRT
        )
        seg = read_config(repository, "segmentation")
        assert dict(seg.cc_model_filenames) == {"8.9": "model_sm89.plan", "9.0": "model_sm90.plan"}
        version = repository / "segmentation" / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model_sm89.plan", "model_sm90.plan"]
        assert (version / "model_sm89.plan").read_bytes() == (
            plans / plan_name("selfie_general", sm="89")
        ).read_bytes()
        check_repository(repository)

    def test_the_plan_cache_is_searched_by_capability_and_tensorrt_version(
        self, tmp_path: Path
    ) -> None:
        plans = tmp_path / "plans"
        make_plan(plans, "selfie_general", trt="10.7.0")
        wanted = make_plan(plans, "selfie_general", max_batch=16)
        repository = self.render(
            tmp_path, plan=plans, compute_capabilities=[(9, 0)], trt_version="10.8.0.43"
        )
        plan = repository / "segmentation" / "1" / "model.plan"
        assert plan.read_bytes() == wanted.read_bytes()

    def test_a_segmentation_batch_above_the_ensembles_merges_requests(self, tmp_path: Path) -> None:
        """``--max-batch 64``: the plan model batches up to 64 with the Python model's preferred
        sizes; the ensemble and its other steps keep the request batch (8)."""
        plan = make_plan(tmp_path / "plans", "selfie_general", max_batch=64)
        repository = self.render(tmp_path, plan=plan, max_batch=64)
        seg = read_config(repository, "segmentation")
        assert seg.max_batch_size == 64
        assert list(seg.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
        for model in ("background_blur", "preprocess", "postprocess"):
            assert read_config(repository, model).max_batch_size == 8, model
        check_repository(repository)
        # the default stays the plan default: preferred 4 and 8
        default = self.render(tmp_path / "default")
        assert list(read_config(default, "segmentation").dynamic_batching.preferred_batch_size) == [
            4,
            8,
        ]
        with pytest.raises(ValueError, match="rebuild with --max-batch 64"):
            self.render(tmp_path / "narrow", max_batch=64)  # a b1-8 plan cannot serve it

    def test_link_symlinks_the_cached_plan(self, tmp_path: Path) -> None:
        plan = make_plan(tmp_path / "plans", "selfie_general")
        repository = self.render(tmp_path, plan=plan, link=True)
        target = repository / "segmentation" / "1" / "model.plan"
        assert target.is_symlink() and target.resolve() == plan.resolve()

    def test_a_missing_plan_names_what_is_there(self, tmp_path: Path) -> None:
        plans = tmp_path / "plans"
        make_plan(plans, "selfie_general", sm="89")
        with pytest.raises(ModelUnavailableError, match=r"sm90.*selfie_general_sm89.*build-engine"):
            self.render(tmp_path, plan=plans, compute_capabilities=[(9, 0)], trt_version=TRT)
        assert not (tmp_path / "models").exists()

    def test_a_plan_of_another_network_is_refused(self, tmp_path: Path) -> None:
        plan = make_plan(tmp_path / "plans", "selfie_landscape")
        with pytest.raises(ValueError, match="plan of selfie_landscape, not selfie_general"):
            self.render(tmp_path, plan=plan)

    def test_a_batch_profile_smaller_than_the_ensemble_is_refused(self, tmp_path: Path) -> None:
        plan = make_plan(tmp_path / "plans", "selfie_general", max_batch=4)
        with pytest.raises(ValueError, match=r"must cover 1\.\.8"):
            self.render(tmp_path, plan=plan)
        with pytest.raises(ValueError, match="max_batch 4 < the ensemble's max_batch_size 8"):
            self.render(tmp_path, plan=plan, max_batch=4)

    def test_unknown_model_and_unnamed_plan(self, tmp_path: Path) -> None:
        with pytest.raises(ModelUnavailableError, match="unknown segmentation model"):
            self.render(tmp_path, "no_such_net", plan=tmp_path)
        odd = tmp_path / "model.plan"
        odd.write_bytes(b"x")
        with pytest.raises(ValueError, match="not a plan name"):
            self.render(tmp_path, plan=odd)

    def test_the_source_tree_is_untouched(self, tmp_path: Path) -> None:
        before = {p: p.read_bytes() for p in MODEL_REPOSITORY.rglob("*") if p.is_file()}
        self.render(tmp_path)
        after = {p: p.read_bytes() for p in MODEL_REPOSITORY.rglob("*") if p.is_file()}
        assert after == before


class TestCheckRepository:
    def test_a_dtype_mismatch_between_steps_is_reported(self, tmp_path: Path) -> None:
        repository = TestRenderContainerRepository().render(tmp_path)
        config = repository / "segmentation" / "config.pbtxt"
        config.write_text(config.read_text().replace("TYPE_FP16", "TYPE_FP32"))
        with pytest.raises(ValueError, match="'network_input' has dtypes"):
            check_repository(repository)

    def test_a_missing_step_model_and_a_smaller_batch_are_reported(self, tmp_path: Path) -> None:
        repository = TestRenderContainerRepository().render(tmp_path)
        config = repository / "postprocess" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 2"))
        with pytest.raises(ValueError, match="postprocess: max_batch_size 2 < the ensemble's 8"):
            check_repository(repository)
        for path in (repository / "postprocess").rglob("*"):
            if path.is_file():
                path.unlink()
        with pytest.raises(ValueError, match="step model 'postprocess' missing"):
            check_repository(repository)


# --------------------------------------------------------------------------------------------
# GPUs and the engine cache
# --------------------------------------------------------------------------------------------


class TestVisibleGpus:
    def test_reads_index_uuid_and_capability(self, tools: FakeTools) -> None:
        tools.gpus("0, GPU-aaaa, 9.0", "1, GPU-bbbb, 8.9", "2, GPU-cccc, 10.0")
        assert visible_gpus() == [
            GpuInfo(0, "GPU-aaaa", (9, 0)),
            GpuInfo(1, "GPU-bbbb", (8, 9)),
            GpuInfo(2, "GPU-cccc", (10, 0)),
        ]
        assert [g.cc for g in visible_gpus()] == ["9.0", "8.9", "10.0"]

    def test_no_gpu(self, tools: FakeTools, monkeypatch: pytest.MonkeyPatch) -> None:
        tools.gpus()
        monkeypatch.setitem(sys.modules, "cupy", None)  # the fallback finds nothing either
        assert visible_gpus() == []


class TestBuildEngines:
    model = "fixed_ellipse"

    def test_builds_once_then_skips_while_the_key_matches(
        self, tmp_path: Path, tools: FakeTools
    ) -> None:
        cache = tmp_path / "plans"
        (first,) = build_engines(self.model, cache)
        plan = cache / plan_name(self.model)
        assert first["built"] is True and Path(first["plan"]) == plan.resolve()
        assert plan.read_text() == "engine\n"
        key = EngineKey.from_json(Path(f"{plan}.json").read_text())
        assert (key.compute_capability, key.trt_version, key.model) == ((9, 0), TRT, self.model)
        ((device, argv),) = tools.builds()
        assert device == "GPU-aaaa"  # trtexec ran on the GPU the plan is for
        assert f"--saveEngine={plan.resolve()}" in argv.split()
        assert "--fp16" in argv.split() and "--maxShapes=NETWORK_INPUT:8x3x64x64" in argv
        (second,) = build_engines(self.model, cache)
        assert second["built"] is False and len(tools.builds()) == 1  # key matches: no trtexec
        assert second["key"] == first["key"]

    def test_a_new_tensorrt_a_new_gpu_or_another_profile_rebuilds(
        self, tmp_path: Path, tools: FakeTools
    ) -> None:
        cache = tmp_path / "plans"
        build_engines(self.model, cache)
        tools.trt_version(100900)  # another image: TensorRT 10.9.0
        (report,) = build_engines(self.model, cache)
        assert report["built"] is True and report["plan"].endswith(
            plan_name(self.model, trt="10.9.0")
        )
        tools.gpus("0, GPU-dddd, 8.6")  # the volume moved to another GPU
        (report,) = build_engines(self.model, cache)
        assert report["built"] is True and report["plan"].endswith("_sm86_trt10.9.0_b1-8_fp16.plan")
        (report,) = build_engines(self.model, cache, max_batch=16, opt_batch=8)
        assert report["built"] is True and report["plan"].endswith(
            "_sm86_trt10.9.0_b1-16_fp16.plan"
        )
        assert len(tools.builds()) == 4
        assert build_engines(self.model, cache, max_batch=16, opt_batch=8)[0]["built"] is False
        assert len(tools.builds()) == 4

    def test_a_stale_key_or_force_rebuilds(self, tmp_path: Path, tools: FakeTools) -> None:
        cache = tmp_path / "plans"
        (first,) = build_engines(self.model, cache)
        sidecar = Path(first["plan"] + ".json")
        sidecar.write_text(sidecar.read_text().replace(first["key"]["onnx_sha256"], "0" * 64))
        assert build_engines(self.model, cache)[0]["built"] is True  # other weights
        assert build_engines(self.model, cache, force=True)[0]["built"] is True
        Path(first["plan"]).unlink()
        assert build_engines(self.model, cache)[0]["built"] is True  # plan lost, key kept
        assert len(tools.builds()) == 4

    def test_one_build_per_compute_capability(self, tmp_path: Path, tools: FakeTools) -> None:
        tools.gpus("0, GPU-aaaa, 9.0", "1, GPU-bbbb, 9.0", "2, GPU-cccc, 8.9")
        reports = build_engines(self.model, tmp_path / "plans")
        assert [r["gpu"]["uuid"] for r in reports] == ["GPU-aaaa", "GPU-cccc"]
        assert [device for device, _ in tools.builds()] == ["GPU-aaaa", "GPU-cccc"]
        assert {Path(r["plan"]).name for r in reports} == {
            plan_name(self.model, sm="90"),
            plan_name(self.model, sm="89"),
        }

    def test_the_server_serves_what_the_builder_recorded(
        self, tmp_path: Path, tools: FakeTools
    ) -> None:
        cache = tmp_path / "plans"
        wider = make_plan(cache, self.model, max_batch=16)  # an older build, wider profile
        build_engines(self.model, cache)
        manifest = json.loads((cache / f"{self.model}.deploy.json").read_text())
        assert manifest == {
            "model": self.model,
            "trt_version": TRT,
            "plans": {"9.0": plan_name(self.model)},
        }

        def render(name: str) -> bytes:
            repository = render_container_repository(
                tmp_path / name,
                segmentation_model=self.model,
                plan_path_or_dir=cache,
                gpus=[0],
                source=MODEL_REPOSITORY,
            )
            return (repository / "segmentation" / "1" / "model.plan").read_bytes()

        assert render("recorded") == b"engine\n"  # what was just built, not the wider plan
        tools.trt_version(100900)  # a manifest of another TensorRT does not apply
        with pytest.raises(ModelUnavailableError, match=r"TensorRT 10\.9\.0"):
            render("other-trt")
        tools.trt_version(100800)
        (cache / f"{self.model}.deploy.json").unlink()
        assert render("searched") == wider.read_bytes()  # no manifest: find_plan's best

    def test_a_failing_trtexec_fails_the_job_and_leaves_no_key(
        self, tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
        with pytest.raises(RuntimeError, match=r"(?s)trtexec failed \(3\).*parser error"):
            build_engines(self.model, tmp_path / "plans")
        assert not list((tmp_path / "plans").glob("*.json"))
        monkeypatch.delenv("FAKE_TRTEXEC_FAIL")
        assert build_engines(self.model, tmp_path / "plans")[0]["built"] is True

    def test_no_gpu_or_no_trtexec(
        self, tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ModelUnavailableError, match="no GPU visible"):
            build_engines(self.model, tmp_path, gpus=[])
        (tools.bin / "trtexec").unlink()
        monkeypatch.setattr(deploy, "TRTEXEC_FALLBACKS", (str(tmp_path / "none"),))
        with pytest.raises(ModelUnavailableError, match="trtexec not found"):
            build_engines(self.model, tmp_path)

    def test_cli_build_then_render_from_the_cache(
        self, tmp_path: Path, tools: FakeTools, capsys: pytest.CaptureFixture[str]
    ) -> None:
        cache = tmp_path / "plans"
        args = ["build-engine", "--model", self.model, "--cache", str(cache)]
        assert deploy.main(args) == 0
        (report,) = json.loads(capsys.readouterr().out)
        assert report["built"] is True
        assert deploy.main(args) == 0
        assert json.loads(capsys.readouterr().out)[0]["built"] is False
        out = tmp_path / "models"
        # GPU capability and TensorRT version detected as the server container does.
        render = ["render", "--model", self.model, "--plans", str(cache), "--out", str(out)]
        assert deploy.main([*render, "--gpus", "1", "--check"]) == 0
        assert (out / "segmentation" / "1" / "model.plan").read_text() == "engine\n"
        # Rendering again replaces its own output, and nothing else.
        assert deploy.main([*render, "--gpus", "1"]) == 0
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        assert deploy.main([*render[:-1], str(foreign), "--gpus", "1"]) == 1
        assert "not rendered by bgblur.server.deploy" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Shared memory
# --------------------------------------------------------------------------------------------


class TestShmRequirement:
    def test_the_formula_at_the_largest_frames_and_batch(self) -> None:
        est = shm_requirement()
        frames = 8 * 4320 * 7680 * 3
        assert est.frames_bytes == frames == 796_262_400
        assert est.preprocess_bytes == 2 * frames + 8 * 3 * 256 * 256 * 2
        assert est.postprocess_bytes == 2 * frames + frames // 3 + 8 * 256 * 256 * 2
        assert est.per_gpu_bytes == est.preprocess_bytes + est.postprocess_bytes
        assert est.total_bytes == -(-est.per_gpu_bytes * 11 // 10) + (64 << 20)
        assert 3.5 * 2**30 < est.total_bytes <= 4 * 2**30  # compose's default: 4gb
        assert "shm_size >= 4gb" in est.explain()

    def test_scales_with_gpus_batch_and_network(self) -> None:
        one = shm_requirement(gpus=1)
        four = shm_requirement(gpus=4)
        assert four.total_bytes - four.fixed_bytes == pytest.approx(
            4 * (one.total_bytes - one.fixed_bytes), abs=4
        )
        assert shm_requirement(max_batch=1).frames_bytes == 4320 * 7680 * 3
        assert shm_requirement(network_hw=(224, 224)).per_gpu_bytes < one.per_gpu_bytes
        with pytest.raises(ValueError, match=">= 1"):
            shm_requirement(gpus=0)

    @pytest.mark.parametrize(
        ("text", "size"),
        [
            ("3gb", 3 << 30),
            ("3g", 3 << 30),
            ("512m", 512 << 20),
            ("1.5GB", 3 << 29),
            ("64k", 64 << 10),
            ("65536", 65536),
            ("2GiB", 2 << 30),
        ],
    )
    def test_parse_size(self, text: str, size: int) -> None:
        assert parse_size(text) == size

    def test_parse_size_rejects_nonsense(self) -> None:
        with pytest.raises(ValueError, match="not a size"):
            parse_size("lots")

    def test_cli(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert deploy.main(["shm-size", "--gpus", "2", "--model", "fcn_resnet101"]) == 0
        out = capsys.readouterr().out
        assert "8x3x224x224" in out and "2 GPU(s)" in out


# --------------------------------------------------------------------------------------------
# The server's command line
# --------------------------------------------------------------------------------------------


class TestAdminKey:
    def test_the_environment_s_key_is_used(self) -> None:
        assert container_admin_key({"BGBLUR_ADMIN_KEY": "s3cret-key"}) == ("s3cret-key", False)

    @pytest.mark.parametrize("value", [None, "", "  "])
    def test_an_empty_key_becomes_a_random_one(self, value: str | None) -> None:
        environ = {} if value is None else {"BGBLUR_ADMIN_KEY": value}
        key, generated = container_admin_key(environ)
        assert generated and len(key) >= 32
        assert container_admin_key(environ)[0] != key  # random at each start


class TestServe:
    def args(self, tmp_path: Path, *extra: str) -> list[str]:
        make_plan(tmp_path / "plans", "selfie_general")
        return [
            "serve",
            "--model",
            "selfie_general",
            "--plans",
            str(tmp_path / "plans"),
            "--out",
            str(tmp_path / "models"),
            "--gpus",
            "2",
            "--sm",
            "90",
            "--trt-version",
            TRT,
            *extra,
        ]

    def test_the_container_serves_through_the_guard_and_the_supervisor(self) -> None:
        options = container_server_options(
            Path("/m"), gpus=[0, 1], admin_key="k" * 32, cuda_pool_mb=1, triton_args=["--x=1"]
        )
        assert (options.http_port, options.grpc_port, options.metrics_port) == (8000, 8001, 8002)
        assert options.guard and options.supervise and options.start_attempts is None
        assert options.address == "0.0.0.0" and options.verbose  # the log: docker logs
        server = TritonServer(options)
        argv = server.command(Path("/m"))
        assert argv[:2] == ["tritonserver", "--model-repository=/m"]
        # Triton's own HTTP and gRPC ports are on loopback behind the guards (8000, 8001).
        assert "--http-address=127.0.0.1" in argv and "--grpc-address=127.0.0.1" in argv
        assert (server.http_port, server.grpc_port) == (8000, 8001)
        assert f"--http-port={server.triton_http_port}" in argv
        assert f"--grpc-port={server.triton_grpc_port}" in argv
        assert not {"--http-port=8000", "--grpc-port=8001"} & set(argv)
        assert {"--metrics-port=8002", "--metrics-address=0.0.0.0"} <= set(argv)
        assert "--strict-readiness=true" in argv and "--exit-timeout-secs=30" in argv
        assert argv.count("--cuda-memory-pool-byte-size=1:1048576") == 1
        restricted = [a for a in argv if "restricted" in a]
        assert restricted and all(a.endswith("bgblur-admin-key=" + "k" * 32) for a in restricted)
        assert argv[-1] == "--x=1"  # compose's flags come last

    def test_flags_the_server_sets_are_refused_from_compose(self) -> None:
        for flag in ("--http-port=9000", "--exit-timeout-secs=30", "--http-restricted-api=x:y=z"):
            with pytest.raises(ValueError, match="set by the launcher"):
                container_server_options(
                    Path("/m"), gpus=[0], admin_key="k" * 32, triton_args=[flag]
                )

    def test_dry_run_renders_and_prints_the_argv_without_secrets(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BGBLUR_ADMIN_KEY", "a-secret-admin-key-value")
        args = ["--dry-run", "--shm-check", "off", "--exit-timeout", "20", "--", "--log-verbose=1"]
        assert deploy.main(self.args(tmp_path, *args)) == 0
        out = capsys.readouterr().out
        assert "a-secret-admin-key-value" not in out
        shown = json.loads(out)
        argv = shown["argv"]
        assert f"--model-repository={(tmp_path / 'models').resolve()}" in argv
        assert "--exit-timeout-secs=20" in argv and argv[-1] == "--log-verbose=1"
        assert any(a.endswith("bgblur-admin-key=***") for a in argv)
        assert shown["http_guard"] == "0.0.0.0:8000"
        check_repository(tmp_path / "models")

    def test_segmentation_batch_and_mps_reach_the_server(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``serve --max-batch 64 --mps``: the plan model batches 64 while /dev/shm is computed
        for the Python models' batch (8, as without it), and the server runs under MPS."""
        make_plan(tmp_path / "plans", "selfie_general", max_batch=64)
        args = self.args(tmp_path, "--dry-run", "--shm-check", "off", "--mps")
        args[args.index("--dry-run") : args.index("--dry-run")] = ["--max-batch", "64"]
        assert deploy.main(args) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["mps"] is True
        assert shown["shm"]["max_batch"] == 8 == python_models_max_batch(MODEL_REPOSITORY)
        assert read_config(tmp_path / "models", "segmentation").max_batch_size == 64
        assert deploy.main(self.args(tmp_path, "--dry-run", "--shm-check", "off")) == 0
        assert json.loads(capsys.readouterr().out)["mps"] is False

    def test_too_little_shared_memory_stops_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        small = ["--dry-run", "--shm-path", str(tmp_path / "no-shm")]  # 0 bytes
        assert deploy.main(self.args(tmp_path, *small)) == 1
        err = capsys.readouterr().err
        assert "BGBLUR_SHM_SIZE" in err and "per GPU" in err
        assert not (tmp_path / "models").exists()
        assert deploy.main(self.args(tmp_path, *small, "--shm-check", "warn")) == 0

    def test_no_gpu(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        args = self.args(tmp_path, "--dry-run")
        args[args.index("--gpus") + 1] = "0"
        assert deploy.main(args) == 1
        assert "no GPU visible" in capsys.readouterr().err


def test_the_parser_takes_every_subcommand() -> None:
    parser = deploy.build_parser()
    for command in ("build-engine", "render", "serve", "shm-size"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--help"])
        assert exc.value.code == 0
