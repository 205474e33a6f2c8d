"""monitoring/: Prometheus configuration and alert rules, Grafana dashboard and provisioning."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.infra import project
from tests.infra.promql import APP_METRICS, known_metrics, metric_names, ray_exported_metrics

pytestmark = pytest.mark.infra

PROMETHEUS = project.MONITORING / "prometheus"
GRAFANA = project.MONITORING / "grafana"
DASHBOARD = GRAFANA / "ray-app-dashboard.json"
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


@functools.cache
def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as fh:
        return json.load(fh)


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


# --- PromQL metric names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="ray-head"} == 0', {"up"}),
        (
            'sum by (le) (rate(foo_bucket{a="b", c=~"x|y"}[5m])) / on() group_left bar > 0.5',
            {"foo_bucket", "bar"},
        ),
        ("time() - max(last_seen_seconds) > 4 * 86400", {"last_seen_seconds"}),
        ('histogram_quantile(0.99, rate(h_bucket{job="$job"}[$__rate_interval]))', {"h_bucket"}),
        ("count(up == 1) and on(instance) absent(other)", {"up", "other"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_known_ray_metrics_come_from_the_installed_ray() -> None:
    try:
        exported = ray_exported_metrics()
    except ModuleNotFoundError:
        pytest.skip("ray is not installed")
    assert "ray_serve_num_http_requests_total" in exported
    assert "ray_node_cpu_utilization" in exported
    assert "ray_serve_num_http_requests" not in exported  # counters end in _total
    assert not APP_METRICS & exported


def _unknown(exprs: list[str]) -> set[str]:
    try:
        known = known_metrics()
    except ModuleNotFoundError:
        pytest.skip("ray is not installed: cannot list the metrics it exports")
    return {name for expr in exprs for name in metric_names(expr)} - known


# --- Prometheus --------------------------------------------------------------------------------


def test_alert_rules_structure() -> None:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    assert groups, "no rule groups"
    assert len({g["name"] for g in groups}) == len(groups), "group names must be unique"
    names = [r.get("alert") for r in alert_rules()]
    assert len(set(names)) == len(names), "alert names must be unique"
    for rule in alert_rules():
        name = rule.get("alert")
        assert name and re.match(r"^[A-Z][A-Za-z0-9]+$", name), f"not an alert rule: {rule}"
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: give it a 'for' duration"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"].get("summary") and rule["annotations"].get("description")


def test_the_required_alerts_exist() -> None:
    by_metric: dict[str, set[str]] = {}
    for rule in alert_rules():
        for metric in metric_names(rule["expr"]):
            by_metric.setdefault(metric, set()).add(rule["alert"])
    assert by_metric.get("up"), "a Ray node down alert"
    assert by_metric.get("ray_serve_num_http_error_requests_total"), "a Serve 5xx rate alert"
    assert by_metric.get("ray_serve_http_request_latency_ms_bucket"), "a Serve latency alert"
    assert by_metric.get("ray_app_data_latest_bar_timestamp_seconds"), "a data staleness alert"
    assert by_metric.get("ray_app_live_directional_accuracy"), "a live accuracy alert"
    assert by_metric.get("ray_app_live_rank_ic"), "a live IC alert"
    assert by_metric.get("ray_app_drift_psi"), "a feature drift alert"
    assert by_metric.get("ray_app_prediction_drift_psi"), "a prediction drift alert"
    assert by_metric.get("ray_app_serve_shadow_abs_diff_bucket"), "a shadow disagreement alert"
    assert by_metric.get("ray_app_prediction_log_dropped_total"), "a prediction-log drop alert"
    assert by_metric.get("ray_app_pipeline_last_run_failed"), "a failed pipeline alert"
    assert by_metric.get("ray_app_pipeline_last_success_timestamp_seconds"), "a missing run alert"


def test_every_alert_has_a_promtool_case_where_it_fires() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    missing = {rule["alert"] for rule in alert_rules()} - fired
    assert not missing, f"alerts without a promtool case that fires them: {sorted(missing)}"


@pytest.mark.parametrize(
    "metric",
    [
        "ray_app_data_latest_bar_timestamp_seconds",
        "ray_app_pipeline_last_success_timestamp_seconds",
    ],
)
def test_freshness_alerts_fire_when_their_gauge_is_absent(metric: str) -> None:
    """Nothing reporting freshness is no evidence of freshness: absent() is part of the rule."""
    (rule,) = [r for r in alert_rules() if f"absent({metric})" in r["expr"].replace(" ", "")]
    assert metric in metric_names(rule["expr"])


def test_alerts_use_metrics_ray_exports() -> None:
    unknown = _unknown([r["expr"] for r in alert_rules()])
    assert not unknown, f"metrics neither Ray 2.x nor the platform exports: {unknown}"


def test_prometheus_scrapes_ray_nodes_and_head(ray_cluster: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
    targets = [t for sc in jobs["ray-head"]["static_configs"] for t in sc["targets"]]
    meta = ray_cluster["metadata"]
    head = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    metrics_port = {p["name"]: p["containerPort"] for p in head["ports"]}["metrics"]
    # KubeRay names the head Service <RayCluster or RayService name>-head-svc: the ad-hoc
    # cluster's, and the chart's prediction API (which exports the daily jobs' gauges).
    values = load_yaml(project.CHART / "values.yaml")
    assert targets == [
        f"{name}-head-svc.{namespace}.svc.cluster.local:{metrics_port}"
        for name, namespace in [
            (meta["name"], meta["namespace"]),
            (values["serve"]["name"], values["namespace"]),
        ]
    ]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), rule_file


def test_service_discovery_file_is_the_one_ray_writes() -> None:
    pytest.importorskip("ray", reason="ray is not installed")
    from ray._private import ray_constants

    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    path = job["file_sd_configs"][0]["files"][0]
    assert Path(path).name == ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE


def _promtool() -> str:
    tool = project.find_tool("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return tool


def _run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_check_config() -> None:
    result = _run("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    result = _run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "case"),
    [
        ('{error_code=~"5.."}[5m])', '{error_code=~"4.."}[5m])', "5xx"),  # counts 4xx instead
        ("[5m])) > 0.05", "[5m])) > 0.5", "5xx"),  # 5xx threshold 50%
        ("> 4 * 86400", "> 6 * 86400", "data"),  # stale only after six days
        # no series is no longer stale
        ("absent(ray_app_data_latest_bar_timestamp_seconds)", "vector(1) < 0", "absent"),
        ("max(ray_app_pipeline_last_run_failed) == 1", "max(x) == 1", "pipeline run"),
        ("> 100 * 3600", "> 200 * 3600", "pipeline late"),
        (
            'ray_app_live_rank_ic{window="20d"}) < 0',
            'ray_app_live_rank_ic{window="20d"}) < -0.1',
            "live",
        ),
        ('> on() group_left() max(ray_app_drift_threshold{statistic="psi"})', "> 1", "drift"),
        ("[30m]))) > 0.01", "[30m]))) > 0.05", "shadow"),
        ("sum(increase(ray_app_prediction_log_dropped_total[15m])) > 0", "sum(x) > 0", "drops"),
    ],
)
def test_promtool_alert_unit_tests_catch_a_broken_rule(
    tmp_path: Path, old: str, new: str, case: str
) -> None:
    text = (PROMETHEUS / "alerts.yml").read_text()
    assert text.count(old) == 1, f"{old!r} not found once in alerts.yml"
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    # Only the cases of the broken rule (promtool 2.42 has no --run), to keep this quick.
    tests = copy.deepcopy(load_yaml(PROMETHEUS / "alerts_test.yml"))
    tests["tests"] = [t for t in tests["tests"] if case in t["name"]]
    assert tests["tests"], f"no test case named like {case!r}"
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    result = _run("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, "the alert tests did not notice the broken rule"


# --- Grafana -------------------------------------------------------------------------------------

PANEL_SCHEMAS = {"timeseries", "stat"}


@functools.cache
def _registry(folder: Path) -> Registry:
    resources = []
    for path in sorted(folder.glob("*.jsonschema.json")):
        contents = json.loads(path.read_text())
        uri = f"urn:grafana:{path.name.removesuffix('.jsonschema.json')}"
        resources.append((uri, Resource(contents=contents, specification=DRAFT7)))
    return Registry().with_resources(resources)


def _errors(ref: str, instance: Any, folder: Path) -> list[str]:
    validator = jsonschema.Draft7Validator({"$ref": ref}, registry=_registry(folder))
    errors = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: e.json_path):
        # oneOf/anyOf failures: report the alternative that came closest, not the whole instance.
        best = jsonschema.exceptions.best_match(error.context) if error.context else error
        errors.append(f"{best.json_path}: {best.message[:300]}")
    return errors


def test_dashboard_matches_the_grafana_schema(grafana_schemas: Path) -> None:
    errors = _errors("urn:grafana:dashboard", dashboard(), grafana_schemas)
    assert not errors, "\n".join(errors)


def test_panels_match_their_plugin_schemas(grafana_schemas: Path) -> None:
    errors = []
    for panel in dashboard_panels():
        kind, title = panel["type"], panel.get("title")
        if kind == "row":
            continue
        assert kind in PANEL_SCHEMAS, f"{title}: no schema for panel type {kind!r}"
        errors += _errors(
            f"urn:grafana:{kind}#/definitions/Options", panel["options"], grafana_schemas
        )
        custom = panel["fieldConfig"]["defaults"].get("custom")
        if kind == "timeseries":
            errors += _errors(
                "urn:grafana:timeseries#/definitions/FieldConfig", custom, grafana_schemas
            )
        for target in panel["targets"]:
            errors += _errors("urn:grafana:prometheus", target, grafana_schemas)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update({"titel": "x"}), "'titel' was unexpected"),
        (lambda d: d.update({"refresh": 60}), "60 is not of type 'string'"),
        (lambda d: d["time"].update({"from": 6}), "6 is not of type 'string'"),
        (lambda d: d.pop("templating"), "'templating' is a required property"),
    ],
)
def test_dashboard_schema_rejects(mutate: Any, expected: str, grafana_schemas: Path) -> None:
    broken = copy.deepcopy(dashboard())
    mutate(broken)
    errors = _errors("urn:grafana:dashboard", broken, grafana_schemas)
    assert any(expected in e for e in errors), errors


def test_panel_schemas_reject_bad_panels(grafana_schemas: Path) -> None:
    (stat,) = [p for p in dashboard_panels() if p["type"] == "stat"][:1]
    options = {**stat["options"], "graphMode": "sparkline"}
    errors = _errors("urn:grafana:stat#/definitions/Options", options, grafana_schemas)
    assert any("'sparkline' is not one of" in e for e in errors), errors
    wide = {**stat, "gridPos": {**stat["gridPos"], "w": 30}}
    errors = _errors("urn:grafana:dashboard#/definitions/Panel", wide, grafana_schemas)
    assert any("30 is greater than the maximum of 24" in e for e in errors), errors
    target = {**stat["targets"][0], "expression": "up"}
    errors = _errors("urn:grafana:prometheus", target, grafana_schemas)
    assert any("'expression' was unexpected" in e for e in errors), errors


def test_dashboard_has_stat_and_timeseries_panels_with_unique_ids() -> None:
    panels = dashboard_panels()
    kinds = {p["type"] for p in panels}
    assert {"stat", "timeseries"} <= kinds
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    assert dashboard()["uid"] and len(dashboard()["uid"]) <= 40


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_use_known_metrics() -> None:
    exprs = dashboard_exprs()
    assert exprs
    unknown = _unknown(exprs)
    assert not unknown, f"metrics neither Ray nor the platform exports: {unknown}"


def test_dashboard_shows_live_quality_ab_evidence_drift_and_the_prediction_log() -> None:
    shown = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    wanted = {
        "ray_app_live_directional_accuracy",
        "ray_app_live_ic",
        "ray_app_live_rank_ic",
        "ray_app_ab_rank_ic_diff",
        "ray_app_ab_rank_ic_diff_lower",
        "ray_app_ab_rank_ic_diff_upper",
        "ray_app_drift_psi",
        "ray_app_drift_ks",
        "ray_app_prediction_drift_psi",
        "ray_app_prediction_log_written_total",
        "ray_app_prediction_log_dropped_total",
        "ray_app_pipeline_last_success_timestamp_seconds",
    }
    assert wanted <= shown, sorted(wanted - shown)


def test_dashboard_variables_are_defined_and_datasource_is_templated() -> None:
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    for expr in dashboard_exprs():
        used = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}
        assert used <= defined, f"undefined variables {used - defined} in {expr}"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_provisioning_matches_the_dashboard() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "datasource"]
    assert var["current"]["value"] == source["uid"]
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "ray-app.yml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# --- Alertmanager ----------------------------------------------------------------------------

ALERTMANAGER = project.MONITORING / "alertmanager.yml"


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=RayHeadDown", "severity=critical"], "critical"),
        (["alertname=RayAppFeatureDrift", "severity=warning"], "warning"),
        (["alertname=Other"], "warning"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = project.find_tool("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (apt-get install prometheus-alertmanager)")
    done = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [receiver]


def test_every_alertmanager_receiver_is_a_webhook_and_every_severity_is_routed() -> None:
    config = load_yaml(ALERTMANAGER)
    for receiver in config["receivers"]:
        (hook,) = receiver["webhook_configs"]
        assert hook["url"].startswith("http") and hook["send_resolved"] is True
    routed = {m for r in config["route"]["routes"] for m in r["matchers"]}
    severities = {r["labels"]["severity"] for r in alert_rules()}
    for severity in severities:
        assert any(severity in matcher for matcher in routed), severity
