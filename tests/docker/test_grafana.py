"""The `monitoring` compose profile: Prometheus + Grafana with a provisioned dashboard.

Checked without a Docker engine or Grafana:
- the provisioning files are valid YAML and agree with compose.yaml (datasource URL = the
  Prometheus service and port, dashboard path = the folder compose mounts, home dashboard);
- the dashboard JSON parses, its layout and datasource references are consistent;
- every PromQL expression (template variables substituted as Grafana does) parses (promtool,
  where installed) and names only metrics and labels that exist: Triton's ``nv_*`` as a real
  scrape of the embedded Triton 2.51 shows them, started with the metrics flags compose gives
  the container, plus the GPU metrics (documented; no GPU here), and the models' ``bgblur_*``
  as the same scrape shows them;
- the dashboard shows what the deployment promises (throughput, latency, queue and compute time
  per stage, the bgblur_* metrics, GPU utilisation and memory), and its latency panels show data
  against the embedded server as ``make serve`` starts it (without compose's metrics flags).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgblur.server.launcher import TritonServer
from bgblur.serving.metrics import parse_exposition

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
GRAFANA = DOCKER / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "bgblur.yml"
DASHBOARD = GRAFANA / "dashboards" / "bgblur.json"
RULES = DOCKER / "prometheus" / "rules.yml"

# Triton's GPU metrics (DCGM; label gpu_uuid): server docs/user_guide/metrics.md "GPU Metrics"
# and core src/metrics.cc of release 24.10. Not on this machine's scrape: it has no GPU.
TRITON_GPU_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
GPU_LABELS = {"gpu_uuid"}
STAGES = ("preprocess", "segmentation", "postprocess")
# Template variables as Grafana substitutes them (a multi-value variable: a regex alternation)
VARIABLES = {
    "$__rate_interval": "1m",
    "$stage_model": "(" + "|".join(STAGES) + ")",
    "$ensemble": "background_blur",
}
# words that are not metric names (compared in lower case: inf and nan are case-insensitive)
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
PROMQL_KEYWORDS |= {"inf", "nan"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def compose_defaults(value: Any) -> Any:
    """compose.yaml with every ``${VAR:-default}`` replaced by its default."""
    if isinstance(value, dict):
        return {k: compose_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compose_defaults(v) for v in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group("default") or "", value)
    return value


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return compose_defaults(yaml.safe_load(COMPOSE.read_text()))["services"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, PromQL with the template variables substituted)`` of every target."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


def volume_target(service: dict[str, Any], source: str) -> str:
    (target,) = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == source]
    return target


# --------------------------------------------------------------------------------------------
# PromQL reading
# --------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\s*\{(?P<matchers>[^}]*)\}")
_MATCHER = re.compile(
    r'(?P<label>[A-Za-z_]\w*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"'
)
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)"
)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for match in _GROUPING.finditer(expr)
        for label in match.group("labels").split(",")
        if label.strip()
    }


def test_promql_readers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, stage) (rate(a_bucket{stage=~"x|y"}[1m]))) '
        '/ on(stage) group_left sum without (k) (b_total) * 1e3 + max(c{q="0.5"}) or vector(0)'
    )
    assert metric_names_in(expr) == {"a_bucket", "b_total", "c"}
    assert grouping_labels(expr) == {"le", "stage", "k"}
    assert [m.group("name") for m in _SELECTOR.finditer(expr)] == ["a_bucket", "c"]


# --------------------------------------------------------------------------------------------
# What exists: a real scrape
# --------------------------------------------------------------------------------------------


def compose_metrics_flags(services: dict[str, Any]) -> list[str]:
    """The triton service's ``--metrics-*`` flags (what changes which series Triton exports)."""
    command = services["triton"]["command"]
    flags = [a for a in command[command.index("--") + 1 :] if a.startswith("--metrics-")]
    assert any(f.startswith("--metrics-config=summary_latencies=true") for f in flags)
    return flags


@dataclass
class Exported:
    """What a metrics endpoint exports: label names per metric, label values per (metric, label)."""

    labels: dict[str, set[str]]
    values: dict[tuple[str, str], set[str]]


@pytest.fixture(scope="module")
def exported(services: dict[str, Any]) -> Exported:
    """A real scrape of the embedded Triton 2.51 (CPU) started with compose's metrics flags,
    plus Triton's GPU metrics (label names only)."""
    server = TritonServer(
        extra_args=compose_metrics_flags(services), device="cpu", segmentation_model="fixed_ellipse"
    )
    with server:
        url = f"http://{server.metrics_url}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            samples = parse_exposition(response.read().decode())
    found = Exported(labels={}, values={})
    for name, pairs in samples:
        found.labels.setdefault(name, set()).update(k for k, _ in pairs)
        for key, value in pairs:
            found.values.setdefault((name, key), set()).add(value)
    for name in TRITON_GPU_METRICS:
        found.labels.setdefault(name, set()).update(GPU_LABELS)
    return found


# --------------------------------------------------------------------------------------------
# Compose and provisioning
# --------------------------------------------------------------------------------------------


def test_monitoring_services_are_in_the_profile_only(services) -> None:
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in ("engine-builder", "triton"):
        assert "profiles" not in services[name], name
    assert services["grafana"]["depends_on"] == ["prometheus"]
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert {p.rpartition(":")[2] for p in services["grafana"]["ports"]} == {"3000"}


def test_the_datasource_is_compose_s_prometheus(services) -> None:
    document = yaml.safe_load(DATASOURCES.read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    container_port = services["prometheus"]["ports"][0].rpartition(":")[2]
    assert source["url"] == f"http://prometheus:{container_port}"
    assert source["isDefault"] is True
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]


def test_the_dashboard_provider_reads_the_mounted_folder(services) -> None:
    grafana = services["grafana"]
    document = yaml.safe_load(PROVIDERS.read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    mounted = volume_target(grafana, "./grafana/dashboards")
    assert provider["options"]["path"] == mounted
    assert volume_target(grafana, "./grafana/provisioning") == "/etc/grafana/provisioning"
    assert all(v.endswith(":ro") for v in grafana["volumes"] if v.startswith("./"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(mounted + "/")
    assert (GRAFANA / "dashboards" / home[len(mounted) + 1 :]).is_file()
    # the provisioning folder holds what Grafana reads, nothing else
    files = {p.relative_to(GRAFANA / "provisioning").as_posix() for p in GRAFANA.rglob("*.yml")}
    assert files == {"datasources/prometheus.yml", "dashboards/bgblur.yml"}


# --------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------


def test_dashboard_structure(dashboard) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            assert target["expr"].strip()
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]
        assert f"${variable['name']}" in VARIABLES


def test_every_expression_names_metrics_that_exist(dashboard, exported) -> None:
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    known = set(exported.labels) | recorded  # the scrape (+ the GPU metrics) and the rules
    assert {"bgblur_frames_total", "bgblur_batch_frames_count"} <= known
    for title, expr in expressions(dashboard):
        names = metric_names_in(expr)
        assert names, (title, expr)
        assert names <= known, (title, names - known)


def test_every_selector_and_grouping_uses_labels_that_exist(dashboard, exported) -> None:
    for title, expr in expressions(dashboard):
        names = metric_names_in(expr)
        for selector in _SELECTOR.finditer(expr):
            name = selector.group("name")
            for matcher in _MATCHER.finditer(selector.group("matchers")):
                label, op, value = matcher.group("label", "op", "value")
                assert label in exported.labels[name], (title, name, label)
                seen = exported.values.get((name, label))
                if seen is None:  # GPU metrics: not scraped here
                    continue
                if op == "=":
                    assert value in seen, (title, name, label, value, seen)
                elif op == "=~":
                    assert any(re.fullmatch(value, v) for v in seen), (title, name, value, seen)
        available = set().union(*(exported.labels[n] for n in names)) | {"le", "quantile"}
        assert grouping_labels(expr) <= available, (title, grouping_labels(expr) - available)


def test_the_dashboard_shows_what_the_deployment_promises(dashboard) -> None:
    used = set().union(*(metric_names_in(e) for _, e in expressions(dashboard)))
    promised = {
        "bgblur_frames_total",  # throughput per stage
        "nv_inference_request_summary_us",  # latency p50/p99
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",  # queue time per stage
        "nv_inference_queue_summary_us",
        "nv_inference_compute_infer_duration_us",  # compute per stage
        "bgblur_batch_compute_seconds_bucket",
        "bgblur_batch_compute_seconds_sum",
        "bgblur_batch_frames_sum",  # batch sizes
        "bgblur_batch_frames_count",
        "bgblur_rejected_requests_total",  # validation
        "bgblur_failed_requests_total",
        "nv_gpu_utilization",  # GPU
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
    }
    assert promised <= used, promised - used
    quantiles = " ".join(e for _, e in expressions(dashboard) if "request_summary" in e)
    assert "0.5" in quantiles and "0.99" in quantiles


TIME_UNITS = {"s", "ms", "µs", "ns"}


@pytest.mark.slow
def test_every_latency_panel_shows_data_against_the_embedded_server(
    dashboard, triton_server
) -> None:
    """The server ``make serve`` starts has none of compose's ``--metrics-*`` flags (Triton's
    latency summaries are off there): every panel in a unit of time has a target whose metrics
    that server exports, and reports seconds (the metrics' base unit; Grafana scales it)."""
    with urllib.request.urlopen(f"http://{triton_server.metrics_url}/metrics", timeout=10) as r:
        plain = {name for name, _ in parse_exposition(r.read().decode())}
    timed = [
        p for p in panels(dashboard) if p.get("fieldConfig", {}).get("defaults", {}).get("unit")
    ]
    timed = [p for p in timed if p["fieldConfig"]["defaults"]["unit"] in TIME_UNITS]
    assert {"Request latency (server side)", "Queue time per stage"} <= {p["title"] for p in timed}
    for panel in timed:
        assert panel["fieldConfig"]["defaults"]["unit"] == "s", panel["title"]
        shown = [t for t in panel["targets"] if metric_names_in(t["expr"]) <= plain]
        assert shown, (panel["title"], [t["expr"] for t in panel["targets"]])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_every_expression(dashboard, tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(expressions(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    proc = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
