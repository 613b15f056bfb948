"""The Docker deployment, checked without a Docker engine (there is none on these machines).

- docker/compose.yaml: ``docker-compose config`` (Compose's own validation; skipped where no
  Compose is installed) and the properties the deployment relies on, read from the YAML with
  Compose's variable defaults: GPU reservation, health check, ports, grace period versus Triton's
  exit timeout, start order, restricted APIs, shared memory against ``shm_requirement``, restart
  policies, log rotation; its two commands parse, and run (dry run, stand-in tools).
- docker/.env: every variable compose.yaml uses, with the same default, documented.
- docker/Dockerfile: pinned base image, non-root user, layer order, what the build context holds
  (/.dockerignore).
- Health check and metrics against the real (embedded, CPU) Triton server: the health check's
  own command, and the metric names docker/prometheus/rules.yml records from; promtool checks the
  rules (and unit-tests them on synthetic series) where it is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bgblur.models.registry import get_model_spec
from bgblur.server import deploy
from bgblur.server.deploy import parse_size, shm_requirement
from bgblur.server.launcher import TritonServer

try:
    import yaml
except ImportError:  # only the tests that read YAML need it
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_FILE = DOCKER / ".env"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RULES = DOCKER / "prometheus" / "rules.yml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


# --------------------------------------------------------------------------------------------
# Reading the files as Compose and Docker do
# --------------------------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` over a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, default = match.group("name", "op", "default")
        if name in env and (env[name] != "" or op != ":-"):
            return env[name]
        return default or "" if op else ""

    return _VAR.sub(one, value)


def compose_variables() -> dict[str, str]:
    """Every variable compose.yaml uses, with its inline default."""
    found: dict[str, str] = {}
    for match in _VAR.finditer(COMPOSE.read_text()):
        found[match.group("name")] = match.group("default") or ""
    return found


def read_yaml(text: str) -> Any:
    if yaml is None:
        pytest.skip("PyYAML is not installed (requirements.txt)")
    return yaml.safe_load(text)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(read_yaml(COMPOSE.read_text()), env or {})


def read_env_file() -> dict[str, tuple[str, list[str]]]:
    """``{name: (value, comment lines just above it)}`` of docker/.env."""
    entries: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            name, _, value = line.partition("=")
            entries[name.strip()] = (value, comments)
        else:
            comments = []
    return entries


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of docker/Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        rules.append((negate, _pattern(pattern)))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context holds ``path`` (relative to the repository root): the last
    rule matching the path or one of its parent folders decides, as in Docker."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def published_port(port: str) -> tuple[str, str, str]:
    """``(host address, host port, container port)`` of a Compose short port syntax."""
    address, host, container = port.split(":")
    return address, host, container


def command_flag(command: list[str], prefix: str) -> str:
    (value,) = [arg[len(prefix) :] for arg in command if arg.startswith(prefix)]
    return value


def seconds(duration: str) -> float:
    """A Compose duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


# --------------------------------------------------------------------------------------------
# compose.yaml
# --------------------------------------------------------------------------------------------


def compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def binary() -> list[str]:
    found = compose_binary()
    if found is None:
        pytest.skip("no docker-compose / docker compose here (apt-get install docker-compose)")
    return found


class TestComposeValidates:
    def run(self, binary: list[str], *args: str, **env: str) -> str:
        clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
        proc = subprocess.run(
            [*binary, "-f", str(COMPOSE), *args],
            cwd=DOCKER,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def test_config_is_valid_with_and_without_the_monitoring_profile(
        self, binary: list[str]
    ) -> None:
        self.run(binary, "config", "-q")
        self.run(binary, "--profile", "monitoring", "config", "-q")
        self.run(binary, "--profile", "mps", "config", "-q")

    def test_settings_reach_the_resolved_config(self, binary: list[str]) -> None:
        out = self.run(
            binary,
            "config",
            BGBLUR_GPU_COUNT="all",
            BGBLUR_SHM_SIZE="12gb",
            BGBLUR_GRPC_PORT="9001",
            BGBLUR_MODEL="selfie_landscape",
        )
        services = read_yaml(out)["services"]
        triton = services["triton"]
        assert str(triton["shm_size"]).lower() in ("12gb", str(12 << 30))
        for name in ("engine-builder", "triton"):
            (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
            assert device["count"] in ("all", -1)
            assert "selfie_landscape" in services[name]["command"]
        published = {(str(p["published"]), int(p["target"])) for p in triton["ports"]}
        assert ("9001", 8001) in published
        assert {p["host_ip"] for p in triton["ports"]} == {"127.0.0.1"}

    def test_the_bind_address_switch_reaches_every_published_port(self, binary: list[str]) -> None:
        out = self.run(binary, "--profile", "monitoring", "config", BGBLUR_BIND_ADDRESS="0.0.0.0")
        services = read_yaml(out)["services"]
        for name in ("triton", "prometheus", "grafana"):
            assert {p["host_ip"] for p in services[name]["ports"]} == {"0.0.0.0"}, name


class TestCompose:
    def test_both_services_run_the_image_built_from_the_dockerfile(self, services) -> None:
        builder, triton = services["engine-builder"], services["triton"]
        assert builder["image"] == triton["image"]
        assert builder["build"] == triton["build"]
        assert (COMPOSE.parent / triton["build"]["context"]).resolve() == REPO
        context = COMPOSE.parent / triton["build"]["context"]
        assert (context / triton["build"]["dockerfile"]).resolve() == DOCKERFILE

    @pytest.mark.parametrize("name", ["engine-builder", "triton"])
    def test_gpu_reservation_from_an_env_variable(self, services, name: str) -> None:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        raw = read_yaml(COMPOSE.read_text())["services"][name]
        (raw_device,) = raw["deploy"]["resources"]["reservations"]["devices"]
        assert raw_device["count"] == "${BGBLUR_GPU_COUNT:-1}"
        assert device["count"] == "1"

    def test_the_server_starts_after_the_engine_builder_succeeded(self, services) -> None:
        triton = services["triton"]
        assert triton["depends_on"] == {
            "engine-builder": {"condition": "service_completed_successfully"}
        }
        assert services["engine-builder"]["restart"] == "no"  # one-shot
        assert triton["restart"] in ("unless-stopped", "always")

    def test_ports(self, services) -> None:
        ports = [published_port(p) for p in services["triton"]["ports"]]
        assert {container for _, _, container in ports} == {"8000", "8001", "8002"}
        assert {host for _, host, _ in ports} == {"8000", "8001", "8002"}  # defaults

    def test_every_port_is_published_on_loopback_unless_configured(self) -> None:
        published = 0
        for env, address in ({}, "127.0.0.1"), ({"BGBLUR_BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0"):
            for name, service in load_compose(env)["services"].items():
                for port in service.get("ports", []):
                    assert published_port(port)[0] == address, (name, port)
                    published += 1
        assert published == 2 * 8  # Triton's three (and triton-mps's), Prometheus, Grafana
        value, comments = read_env_file()["BGBLUR_BIND_ADDRESS"]
        assert value == "127.0.0.1"
        assert "0.0.0.0" in " ".join(comments)  # the documented switch to all interfaces

    def test_every_service_has_a_memory_limit_from_the_env_file(self, services) -> None:
        raw = read_yaml(COMPOSE.read_text())["services"]
        env = read_env_file()
        for name, service in services.items():
            variable = re.fullmatch(r"\$\{(BGBLUR_\w+_MEMORY):-[^}]+\}", raw[name]["mem_limit"])
            assert variable is not None, name
            assert parse_size(service["mem_limit"]) == parse_size(env[variable.group(1)][0])
            assert parse_size(service["mem_limit"]) >= 256 << 20, name
        # /dev/shm is tmpfs inside the container: its pages count against the server's limit
        triton = services["triton"]
        assert parse_size(triton["mem_limit"]) >= 2 * parse_size(triton["shm_size"])

    def test_every_long_running_service_has_a_health_check(self, services) -> None:
        endpoints = {
            "triton": "http://127.0.0.1:8000/v2/health/ready",
            "triton-mps": "http://127.0.0.1:8000/v2/health/ready",
            "prometheus": "http://127.0.0.1:9090/-/healthy",
            "grafana": "http://127.0.0.1:3000/api/health",
        }
        assert set(endpoints) | {"engine-builder"} == set(services)
        for name, url in endpoints.items():
            check = services[name]["healthcheck"]
            assert check["test"][0] == "CMD", name
            assert url in " ".join(check["test"]), name
            assert seconds(check["timeout"]) < seconds(check["interval"]), name
            assert int(check["retries"]) >= 1 and seconds(check["start_period"]) > 0, name
            container_port = url.split(":")[2].split("/")[0]
            assert any(published_port(p)[2] == container_port for p in services[name]["ports"])
        # the engine builder is a one-shot job: the server waits for its exit code instead
        assert "healthcheck" not in services["engine-builder"]
        assert services["engine-builder"]["restart"] == "no"

    def test_grafana_has_no_default_password(self, services) -> None:
        raw = read_yaml(COMPOSE.read_text())["services"]["grafana"]
        assert raw["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == (
            "${BGBLUR_GRAFANA_ADMIN_PASSWORD:-}"
        )
        assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ""
        assert read_env_file()["BGBLUR_GRAFANA_ADMIN_PASSWORD"][0] == ""

    @pytest.mark.parametrize(
        ("password", "starts"), [("", False), ("admin", False), ("a long passphrase", True)]
    )
    def test_grafana_refuses_to_start_without_a_password(
        self, services, tmp_path: Path, password: str, starts: bool
    ) -> None:
        """The entrypoint as the container runs it (Compose's $$ unescaped), with Grafana's
        own /run.sh replaced by a stand-in that reports it was started."""
        entrypoint = [a.replace("$$", "$") for a in services["grafana"]["entrypoint"]]
        assert entrypoint[:2] == ["/bin/sh", "-c"] and "exec /run.sh" in entrypoint[2]
        stand_in = tmp_path / "run.sh"
        stand_in.write_text('#!/bin/sh\necho "grafana started $*"\n')
        stand_in.chmod(0o755)
        script = entrypoint[2].replace("/run.sh", str(stand_in))
        env = {"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": password}
        proc = subprocess.run(
            ["/bin/sh", "-c", script, *entrypoint[3:], "--extra"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if starts:
            assert proc.returncode == 0 and proc.stdout == "grafana started --extra\n"
        else:
            assert proc.returncode == 1 and "grafana started" not in proc.stdout
            assert "BGBLUR_GRAFANA_ADMIN_PASSWORD" in proc.stderr

    def test_healthcheck_asks_triton_for_readiness(self, services) -> None:
        check = services["triton"]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert "http://127.0.0.1:8000/v2/health/ready" in " ".join(check["test"])
        assert seconds(check["timeout"]) < seconds(check["interval"])
        assert seconds(check["start_period"]) >= 60  # model load + CuPy kernel compiles
        assert "healthcheck" not in services["engine-builder"]

    def test_stop_grace_period_outlasts_tritons_exit_timeout(self, services) -> None:
        triton = services["triton"]
        served = deploy.build_parser().parse_args(triton["command"][3:])
        assert seconds(triton["stop_grace_period"]) > served.exit_timeout + 5
        assert triton["init"] is True  # signals reach the server, zombies are reaped

    def test_admin_apis_are_restricted_and_inference_is_not(self, services) -> None:
        triton = services["triton"]
        # The key comes from the environment (empty by default: serve closes the APIs) ...
        assert triton["environment"][deploy.ADMIN_KEY_ENV] == ""  # compose: ${BGBLUR_ADMIN_KEY:-}
        assert not any("restricted" in arg for arg in triton["command"])
        # ... and the server restricts the admin APIs over both protocols.
        options = deploy.container_server_options(Path("/m"), gpus=[0], admin_key="k" * 32)
        argv = TritonServer(options).command(Path("/m"))
        for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
            values = [a[len(flag) :] for a in argv if a.startswith(flag)]
            apis = {api for v in values for api in v.rpartition(":")[0].split(",")}
            assert {"model-repository", "shared-memory", "logging", "trace"} <= apis
            # the client checks health and reads the model config before inferring
            assert not {"inference", "health", "metadata", "model-config"} & apis

    def test_shared_memory_covers_the_largest_frames_and_batch(self, services) -> None:
        triton = services["triton"]
        (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
        gpus = int(device["count"])
        model = triton["command"][triton["command"].index("--model") + 1]
        max_batch = int(triton["command"][triton["command"].index("--max-batch") + 1])
        need = shm_requirement(
            gpus=gpus, max_batch=max_batch, network_hw=get_model_spec(model).input_hw
        )
        assert parse_size(triton["shm_size"]) >= need.total_bytes
        # ...for every registered network at that GPU count
        for name in ("selfie_general", "selfie_landscape", "fcn_resnet101"):
            need = shm_requirement(gpus=gpus, network_hw=get_model_spec(name).input_hw)
            assert parse_size(triton["shm_size"]) >= need.total_bytes
        assert triton["ulimits"]["memlock"] == -1

    def test_log_rotation_everywhere(self, services) -> None:
        for name, service in services.items():
            logging = service["logging"]
            assert logging["driver"] == "json-file", name
            assert parse_size(logging["options"]["max-size"]) > 0
            assert int(logging["options"]["max-file"]) >= 1

    def test_volumes(self, compose, services) -> None:
        assert "plans:/plans" in services["engine-builder"]["volumes"]
        assert "plans:/plans:ro" in services["triton"]["volumes"]
        assert {"plans", "cupy-cache"} <= set(compose["volumes"])
        dockerfile = DOCKERFILE.read_text()
        assert "/plans" in dockerfile and "CUPY_CACHE_DIR=/var/cache/bgblur/cupy" in dockerfile

    def test_the_mps_service_is_the_server_with_mps_on(self, services) -> None:
        """``triton-mps`` (profile ``mps``): ``triton`` in every setting, its command the same
        plus ``--mps`` before Triton's flags, and parsed by ``serve`` with MPS on."""
        triton, mps = services["triton"], services["triton-mps"]
        assert mps["profiles"] == ["mps"] and "profiles" not in triton
        same = ("command", "profiles")
        assert {k: v for k, v in mps.items() if k not in same} == {
            k: v for k, v in triton.items() if k not in same
        }
        cut = triton["command"].index("--")
        assert mps["command"] == [*triton["command"][:cut], "--mps", *triton["command"][cut:]]
        parser = deploy.build_parser()
        assert parser.parse_args(mps["command"][3:]).mps is True
        assert parser.parse_args(triton["command"][3:]).mps is False

    def test_builder_and_server_build_the_same_batch_profile(self, services) -> None:
        builder = services["engine-builder"]["command"]
        triton = services["triton"]["command"]
        for option in ("--model", "--max-batch"):
            assert builder[builder.index(option) + 1] == triton[triton.index(option) + 1]
        assert builder[builder.index("--cache") + 1] == triton[triton.index("--plans") + 1]

    def test_the_commands_parse_and_run(
        self, services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
    ) -> None:
        """Both commands as compose gives them, through bgblur.server.deploy's own parser; then run,
        with paths moved to tmp_path, stand-in trtexec/nvidia-smi, and a dry run of serve."""
        builder = services["engine-builder"]["command"]
        triton = services["triton"]["command"]
        assert builder[:4] == ["python3", "-m", "bgblur.server.deploy", "build-engine"]
        assert triton[:4] == ["python3", "-m", "bgblur.server.deploy", "serve"]
        parser = deploy.build_parser()
        parser.parse_args(builder[3:])
        served = parser.parse_args(triton[3:])
        assert served.triton_args[0] == "--"

        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, body in {
            "trtexec": 'echo "[TensorRT v100800]"; for a; do case "$a" in --saveEngine=*) '
            'echo e > "${a#--saveEngine=}";; esac; done',
            "nvidia-smi": 'echo "0, GPU-aaaa, 9.0"',
        }.items():
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bin_dir / name).chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

        def moved(command: list[str]) -> list[str]:
            args = [a.replace("/plans", str(tmp_path / "plans")) for a in command[3:]]
            args = [a.replace("/tmp/bgblur/models", str(tmp_path / "models")) for a in args]
            # fixed_ellipse: no weights needed to export it; the rest as compose says
            return [("fixed_ellipse" if a == "selfie_general" else a) for a in args]

        assert deploy.main(moved(builder)) == 0
        args = moved(triton)
        cut = args.index("--")
        args[cut:cut] = ["--gpus", "1", "--dry-run", "--shm-check", "off"]
        assert deploy.main(args) == 0
        out = capsys.readouterr().out
        argv = json.loads(out[out.index('{\n  "argv"') :])["argv"]
        assert argv[0] == "tritonserver"
        assert "--exit-timeout-secs=30" in argv
        assert any(a.endswith(f"{deploy.ADMIN_KEY_HEADER}=***") for a in argv)
        deploy.check_repository(tmp_path / "models")


# --------------------------------------------------------------------------------------------
# .env
# --------------------------------------------------------------------------------------------


class TestEnvFile:
    def test_every_variable_is_there_with_compose_default(self) -> None:
        used = compose_variables()
        listed = read_env_file()
        assert set(listed) == set(used)
        for name, default in used.items():
            assert listed[name][0] == default, name

    def test_every_variable_is_documented(self) -> None:
        for name, (_, comments) in read_env_file().items():
            assert comments, f"{name} has no comment above it"

    def test_the_documented_shm_default_is_compose_s(self, services) -> None:
        assert read_env_file()["BGBLUR_SHM_SIZE"][0] == services["triton"]["shm_size"]


# --------------------------------------------------------------------------------------------
# Dockerfile and build context
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions()


class TestDockerfile:
    def index(self, instructions, keyword: str, fragment: str) -> int:
        hits = [i for i, (k, a) in enumerate(instructions) if k == keyword and fragment in a]
        assert hits, f"no {keyword} with {fragment!r}"
        return hits[0]

    def test_from_a_pinned_triton_release(self, instructions, services) -> None:
        args = {}
        for keyword, rest in instructions:
            if keyword == "FROM":
                image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
                break
            if keyword == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                args[name] = value
        assert re.fullmatch(
            r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", image
        )
        release = image.split(":")[1][:5]
        assert services["triton"]["build"]["args"]["TRITON_RELEASE"] == release
        assert services["triton"]["image"].endswith(f":{release}")
        assert sum(k == "FROM" for k, _ in instructions) == 1

    def test_runs_as_a_non_root_user(self, instructions) -> None:
        users = [(i, a) for i, (k, a) in enumerate(instructions) if k == "USER"]
        assert users, "no USER"
        last, user = users[-1]
        assert user.split(":")[0] not in ("root", "0")
        assert all(k not in ("RUN", "COPY", "ADD") for k, _ in instructions[last + 1 :])
        assert self.index(instructions, "RUN", "useradd") < last

    def test_dependencies_before_the_source(self, instructions) -> None:
        requirements = self.index(instructions, "COPY", "docker/requirements.txt")
        install = self.index(instructions, "RUN", "pip install -r /opt/bgblur/requirements.txt")
        torch = self.index(instructions, "RUN", "torch==")
        weights = self.index(instructions, "RUN", "pip download")
        source = self.index(instructions, "COPY", "backends")
        project = self.index(instructions, "RUN", "pip install --no-deps /opt/bgblur/src")
        fetch = self.index(instructions, "RUN", "bgblur.models.selfie fetch")
        repository = self.index(instructions, "COPY", "model_repository")
        assert max(requirements, install, torch, weights) < source < project <= fetch < repository
        assert requirements < install

    def test_every_package_is_pinned(self, instructions) -> None:
        lines = [
            line.strip()
            for line in (DOCKER / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[\w.*+]+", line) for line in lines)
        args = dict(a.partition("=")[::2] for k, a in instructions if k == "ARG" and "=" in a)
        assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
        assert "cupy-cuda12x" in " ".join(lines)  # CUDA 12 image

    def test_weights_are_in_the_image_and_the_paths_agree(self, instructions) -> None:
        env = " ".join(a for k, a in instructions if k == "ENV")
        fetch = instructions[self.index(instructions, "RUN", "bgblur.models.selfie fetch")][1]
        cache = re.search(r"BGBLUR_CACHE=(\S+)", env).group(1)
        assert f"--cache-dir {cache}" in fetch
        source = re.search(r"BGBLUR_MODEL_SOURCE=(\S+)", env).group(1)
        copy = instructions[self.index(instructions, "COPY", "model_repository")][1]
        assert copy.split()[-1] == source

    def test_exposes_the_ports_and_serves_by_default(self, instructions) -> None:
        exposed = {p for k, a in instructions if k == "EXPOSE" for p in a.split()}
        assert exposed == {"8000", "8001", "8002"}
        (cmd,) = [json.loads(a) for k, a in instructions if k == "CMD"]
        assert cmd[:4] == ["python3", "-m", "bgblur.server.deploy", "serve"]
        deploy.build_parser().parse_args(cmd[3:])

    def test_the_build_context_holds_what_copy_needs_and_nothing_else(self, instructions) -> None:
        rules = dockerignore_rules()
        for keyword, rest in instructions:
            if keyword != "COPY" or "--from" in rest:
                continue
            *sources, _ = shlex.split(rest)
            for source in sources:
                path = REPO / source
                assert path.exists(), source
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    if "__pycache__" in relative or relative.endswith(".pyc"):
                        assert not in_build_context(relative, rules), relative
                    else:
                        assert in_build_context(relative, rules), relative
        for left_out in (
            ".venv/bin/python",
            ".git/HEAD",
            ".cache/bgblur/selfie_general.pt",
            ".gpu-bundle/triton.tar.xz",
            "tests/server/test_deploy.py",
            "out/demo.mp4",
            "docker/compose.yaml",
            "docker/.env",
            "bench/e2e.py",
            "bgblur.egg-info/PKG-INFO",
        ):
            assert not in_build_context(left_out, rules), left_out

    def test_the_dockerignore_matcher(self) -> None:
        rules = [(False, _pattern("*")), (True, _pattern("src")), (False, _pattern("**/x"))]
        assert in_build_context("src/a/b.py", rules)
        assert not in_build_context("other/a.py", rules)
        assert not in_build_context("src/a/x/b.py", rules)
        assert not in_build_context("src/x", rules)


# --------------------------------------------------------------------------------------------
# Health check and metrics against the real server
# --------------------------------------------------------------------------------------------


def healthcheck_script(services: dict[str, Any], port: int) -> list[str]:
    test = services["triton"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python3", "-c"]
    return [sys.executable, "-c", test[3].replace("127.0.0.1:8000", f"127.0.0.1:{port}")]


@pytest.mark.slow
def test_the_healthcheck_command_against_the_real_server(services, triton_server) -> None:
    ok = subprocess.run(healthcheck_script(services, triton_server.http_port), timeout=30)
    assert ok.returncode == 0
    from bgblur.server.launcher import free_port

    down = subprocess.run(
        healthcheck_script(services, free_port()), capture_output=True, timeout=30
    )
    assert down.returncode != 0


def rule_metrics() -> set[str]:
    rules = read_yaml(RULES.read_text())
    names: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:nv|bgblur)_[a-z_]+)\b", rule["expr"]))
    return names


def test_rules_record_per_stage_figures_of_the_ensemble_models() -> None:
    rules = read_yaml(RULES.read_text())
    records = [r["record"] for g in rules["groups"] for r in g["rules"]]
    assert all(r.startswith("bgblur:stage_") for r in records)
    assert set(records) == set(EXPECTED)
    # base units in the recorded names too (seconds, not ms/us)
    assert not [r for r in records if re.search(r"_(ms|us|milliseconds|microseconds)\b", r)]
    assert {"nv_inference_count", "bgblur_frames_total"} <= rule_metrics()
    models = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            for selector in re.findall(r'model=~"([^"]+)"', rule["expr"]):
                models |= set(selector.split("|"))
    assert models == {"preprocess", "segmentation", "postprocess", "background_blur"}
    prometheus = read_yaml(PROMETHEUS.read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["triton:8002"]
    assert prometheus["rule_files"] == ["/etc/prometheus/rules.yml"]


@pytest.mark.slow
def test_the_rules_metric_names_exist_in_tritons_metrics(triton_server) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://{triton_server.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    exported = set(re.findall(r"^((?:nv|bgblur)_[a-z_]+)\{", text, re.MULTILINE))
    assert rule_metrics() <= exported, rule_metrics() - exported
    for model in ("preprocess", "segmentation", "postprocess", "background_blur"):
        assert f'nv_inference_count{{model="{model}"' in text


# Synthetic counters for one stage, sampled every 15 s: per second 8 frames in 1 batch
# execution for 2 requests, 200 us queueing, 1200 us compute and 2000 us end to end in total
# (Triton's); the model ran them as 2 batches of 4 frames, 1/1024 s of compute per frame (its
# bgblur_*: a power-of-two ratio to the frames keeps the expected quotient exact).
PER_15S = {
    "nv_inference_count": 120,
    "nv_inference_exec_count": 15,
    "nv_inference_request_success": 30,
    "nv_inference_request_failure": 0,
    "nv_inference_queue_duration_us": 3000,
    "nv_inference_compute_input_duration_us": 1500,
    "nv_inference_compute_infer_duration_us": 15000,
    "nv_inference_compute_output_duration_us": 1500,
    "nv_inference_request_duration_us": 30000,
    "bgblur_frames_total": 120,
    "bgblur_batch_compute_seconds_sum": 120 / 1024,
    "bgblur_batch_frames_sum": 120,
    "bgblur_batch_frames_count": 30,
}
EXPECTED = {
    "bgblur:stage_frames_per_second": 8,
    "bgblur:stage_requests_per_second": 2,
    "bgblur:stage_batch_frames:avg": 8,
    "bgblur:stage_queue_seconds_per_request": 0.0001,
    "bgblur:stage_compute_seconds_per_request": 0.0006,
    "bgblur:stage_request_seconds": 0.001,
    "bgblur:stage_failures_per_second": 0,
    "bgblur:stage_compute_seconds_per_frame": 1 / 1024,
    "bgblur:stage_frames_per_batch:avg": 4,
}


def promtool_unit_test(rules: Path) -> str:
    # Triton's series carry the model's version; the models' own bgblur_* only the model
    labels = {"nv": 'model="segmentation",version="1"', "bgblur": 'model="segmentation"'}
    series = [
        {"series": f"{name}{{{labels[name.split('_')[0]]}}}", "values": f"0+{step}x40"}
        for name, step in PER_15S.items()
    ]
    checks = [
        {
            "expr": record,
            "eval_time": "5m",
            "exp_samples": [{"labels": f'{record}{{model="segmentation"}}', "value": value}],
        }
        for record, value in EXPECTED.items()
    ]
    return json.dumps(  # JSON is YAML: promtool reads it
        {
            "rule_files": [str(rules)],
            "evaluation_interval": "15s",
            "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": checks}],
        }
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    shutil.copyfile(RULES, rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS.read_text().replace("/etc/prometheus/rules.yml", str(rules)))
    tests = tmp_path / "rules_test.yml"
    tests.write_text(promtool_unit_test(rules))
    for argv in (["check", "config", str(config)], ["test", "rules", str(tests)]):
        proc = subprocess.run(["promtool", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# README (the deployment guide, docs/deploy.md)
# --------------------------------------------------------------------------------------------


def test_readme_shows_the_computed_shm_and_what_was_not_run(services) -> None:
    text = DEPLOY_DOC.read_text()
    need = shm_requirement()
    assert f"{need.total_bytes:,}" in text and f"{need.per_gpu_bytes:,}" in text
    assert "## Not run here" in text
    for name in compose_variables():
        assert name in text, name
