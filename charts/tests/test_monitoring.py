"""The chart's monitoring: the members' and the operator's scrape objects, the PrometheusRule
and the Grafana dashboard. They render only when switched on; built-in kinds pass the
Kubernetes schemas and the Prometheus Operator's kinds pass the models generated from its CRDs;
the rules pass `promtool check rules` and their unit tests (`alerts/`) under `promtool test
rules`; and every metric they name is one the node or the operator exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

from conftest import CHART, KUBE_VERSIONS, NAMESPACE, REPO, by_kind, render

ALERT_TESTS = Path(__file__).parent / "alerts" / "ferrokv-alerts.test.yaml"
MONITORING_KINDS = {
    "ServiceMonitor": monitoring_v1.ServiceMonitor,
    "PodMonitor": monitoring_v1.PodMonitor,
    "PrometheusRule": monitoring_v1.PrometheusRule,
}
EVERYTHING_ON = {
    "serviceMonitor": {"enabled": True},
    "memberMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (scripts/test installs it)")
    return path


def with_members(kind: str) -> dict:
    return {**EVERYTHING_ON, "memberMonitor": {"enabled": True, "kind": kind}}


def monitoring_objects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]


def passes_its_crd(obj: dict) -> None:
    """Validates a Prometheus Operator object against the model of its CRD. The models ignore
    fields they do not know, so the object must also come back whole: a misspelt or misplaced
    field is lost on the way and fails the comparison."""
    model = MONITORING_KINDS[obj["kind"]].model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj


def rule_groups(values: dict | None = None) -> list[dict]:
    (rule,) = by_kind(render({"prometheusRule": {"enabled": True}, **(values or {})}), "PrometheusRule")
    return rule["spec"]["groups"]


def dashboard(values: dict | None = None) -> dict:
    (config_map,) = by_kind(render({"grafanaDashboard": {"enabled": True}, **(values or {})}), "ConfigMap")
    return json.loads(config_map["data"]["ferrokv.json"])


def dashboard_queries(board: dict) -> list[str]:
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


# --- switched on and off ---------------------------------------------------------------------


def test_monitoring_is_off_by_default():
    objects = render()
    assert monitoring_objects(objects) == []
    assert by_kind(objects, "ConfigMap") == []


@pytest.mark.parametrize(
    "switch, kind",
    [
        ("serviceMonitor", "ServiceMonitor"),
        ("memberMonitor", "PodMonitor"),
        ("prometheusRule", "PrometheusRule"),
        ("grafanaDashboard", "ConfigMap"),
    ],
)
def test_each_switch_renders_its_object_and_nothing_else(switch, kind):
    default_kinds = sorted(o["kind"] for o in render())
    objects = render({switch: {"enabled": True}})
    assert sorted(o["kind"] for o in objects) == sorted([*default_kinds, kind])
    off = render({switch: {"enabled": False}})
    assert sorted(o["kind"] for o in off) == default_kinds


def test_member_monitor_kind_is_chosen_by_values():
    (pod_monitor,) = by_kind(render({"memberMonitor": {"enabled": True}}), "PodMonitor")
    assert "podMetricsEndpoints" in pod_monitor["spec"]
    objects = render({"memberMonitor": {"enabled": True, "kind": "ServiceMonitor"}})
    assert by_kind(objects, "PodMonitor") == []
    (service_monitor,) = by_kind(objects, "ServiceMonitor")
    assert service_monitor["metadata"]["name"].endswith("-members")
    assert "endpoints" in service_monitor["spec"]


@pytest.mark.parametrize("member_kind", ["PodMonitor", "ServiceMonitor"])
def test_chart_with_everything_on_lints_clean_in_strict_mode(member_kind):
    report = helm.lint(CHART, with_members(member_kind), strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("member_kind", ["PodMonitor", "ServiceMonitor"])
def test_everything_on_passes_the_kubernetes_schemas_and_the_prometheus_operator_crds(kube_version, member_kind):
    objects = render(with_members(member_kind))
    crd_kinds = sorted(o["kind"] for o in monitoring_objects(objects))
    assert crd_kinds == sorted(["ServiceMonitor", member_kind, "PrometheusRule"])
    for obj in objects:
        if obj in monitoring_objects(objects):
            # No Kubernetes release has these schemas; they come with the Prometheus Operator.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, kube_version, strict=True)
            passes_its_crd(obj)
        else:
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_crd_check_catches_a_misplaced_field():
    (rule,) = by_kind(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["severity"] = "critical"
    with pytest.raises(AssertionError):
        passes_its_crd(rule)


# --- what the monitors select ----------------------------------------------------------------


def test_pod_monitor_selects_the_member_pods_the_operator_builds(operator_built_objects):
    (monitor,) = by_kind(render({"memberMonitor": {"enabled": True}}), "PodMonitor")
    (sts,) = [o for o in operator_built_objects if o["kind"] == "StatefulSet"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert endpoint["port"] in [p["name"] for p in container["ports"]]
    assert endpoint["path"] == "/metrics"
    # The cluster label comes from the pod label the operator sets.
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    (source,) = relabel["cluster"]["sourceLabels"]
    assert source == "__meta_kubernetes_pod_label_ferrokv_io_cluster"
    assert pod_labels["ferrokv.io/cluster"] == sts["metadata"]["name"]
    assert relabel["job"]["replacement"] == "ferrokv"


def test_member_service_monitor_keeps_the_peer_service_only(operator_built_objects):
    (monitor,) = by_kind(render({"memberMonitor": {"enabled": True, "kind": "ServiceMonitor"}}), "ServiceMonitor")
    services = [o for o in operator_built_objects if o["kind"] == "Service"]
    selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert len(selected) == 2, "both of a cluster's Services carry the member labels"
    (endpoint,) = monitor["spec"]["endpoints"]
    (keep,) = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert keep["sourceLabels"] == ["__meta_kubernetes_service_name"]
    kept = [s for s in selected if re.fullmatch(keep["regex"], s["metadata"]["name"])]
    (peer,) = kept
    assert peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"] is True
    assert endpoint["port"] in [p["name"] for p in peer["spec"]["ports"]]


def test_member_monitor_is_limited_to_the_named_namespaces():
    values = {"memberMonitor": {"enabled": True, "namespaces": ["apps", "billing"], "labels": {"release": "prom"}}}
    (monitor,) = by_kind(render(values), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps", "billing"]}
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_operator_service_monitor_keeps_the_operators_own_labels():
    objects = render({"serviceMonitor": {"enabled": True, "job": "kv-ops"}})
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    # The per-cluster gauges carry the KVCluster's namespace; without honorLabels Prometheus
    # would rename it to exported_namespace and the alerts would name the operator's namespace.
    assert endpoint["honorLabels"] is True
    (relabel,) = endpoint["relabelings"]
    assert relabel == {"action": "replace", "targetLabel": "job", "replacement": "kv-ops"}
    (service,) = by_kind(objects, "Service")
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    (deployment,) = by_kind(objects, "Deployment")
    assert f"--http-addr=0.0.0.0:{service['spec']['ports'][0]['port']}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


# --- the rules -------------------------------------------------------------------------------


def write_rules(directory: Path, groups: list[dict]) -> Path:
    path = directory / "ferrokv-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "values",
    [{}, {"prometheusRule": {"enabled": True, "memberSelector": 'job="etcd",env="prod"', "quotaBackendBytes": 8589934592}}],
)
def test_rules_pass_promtool_check(tmp_path, values):
    rules = write_rules(tmp_path, rule_groups(values))
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_pass_their_promtool_unit_tests(tmp_path):
    write_rules(tmp_path, rule_groups())
    tests = tmp_path / ALERT_TESTS.name
    shutil.copy(ALERT_TESTS, tests)
    result = subprocess.run(
        [promtool(), "test", "rules", tests.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet():
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"]}
    severities = {(r["alert"], r["labels"]["severity"]) for g in rule_groups() for r in g["rules"]}
    cases = [c for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    fired = {(c["alertname"], a["exp_labels"]["severity"]) for c in cases for a in c.get("exp_alerts") or []}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert severities - fired == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts no test shows quiet"
    assert {name for name, _ in fired} | quiet <= alerts, "tests of alerts that do not exist"


def test_selectors_and_quota_from_values_reach_every_rule():
    groups = rule_groups(
        {
            "prometheusRule": {
                "enabled": True,
                "memberSelector": 'job="etcd",env="prod"',
                "operatorSelector": 'job="ops"',
                "quotaBackendBytes": 8589934592,
            }
        }
    )
    rules = {g["name"]: g["rules"] for g in groups}
    for rule in rules["ferrokv-members"]:
        assert '{job="etcd",env="prod"}' in rule["expr"], rule["alert"]
        assert 'job="ferrokv"' not in rule["expr"], rule["alert"]
    for rule in rules["ferrokv-operator"]:
        assert re.search(r'\{job="ops"[,}]', rule["expr"]), rule["alert"]
    quota_rules = [r for r in rules["ferrokv-members"] if "8589934592" in r["expr"]]
    assert sorted(r["alert"] for r in quota_rules) == ["etcdDatabaseQuotaLowSpace", "etcdExcessiveDatabaseGrowth"]
    assert not any("2147483648" in r["expr"] for g in groups for r in g["rules"])


def test_default_selectors_follow_the_monitors_job_labels():
    groups = rule_groups({"memberMonitor": {"job": "kv-members"}, "serviceMonitor": {"job": "kv-ops"}})
    exprs = " ".join(r["expr"] for g in groups for r in g["rules"])
    assert 'job="kv-members"' in exprs and 'job="kv-ops"' in exprs
    assert 'job="ferrokv"' not in exprs and 'job="ferrokv-operator"' not in exprs


# --- the metrics they name exist -------------------------------------------------------------


def node_metric_names() -> set[str]:
    names = set()
    for source in (REPO / "node").rglob("*.rs"):
        names |= set(re.findall(r'"(etcd_[a-z0-9_]+)"', source.read_text()))
    return names


def operator_metric_names() -> set[str]:
    source = (REPO / "operator" / "src" / "metrics.rs").read_text()
    (prefix,) = re.findall(r'Registry::new_custom\(Some\("([a-z_]+)"', source)
    return {f"{prefix}_{name}" for name in re.findall(r'Opts::new\(\s*"([a-z_]+)"', source)}


def names_in(query: str) -> set[str]:
    selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query))
    mentioned = set(re.findall(r"\b((?:etcd|ferrokv_operator)_[a-z0-9_]+)", query))
    return selected | mentioned


def test_metric_name_scan_finds_what_the_readme_lists():
    # Guards the scan itself: an empty or wrong scan would let any name through below.
    assert {"etcd_server_has_leader", "etcd_disk_wal_fsync_duration_seconds", "etcd_mvcc_db_total_size_in_bytes"} <= node_metric_names()
    assert {"ferrokv_operator_reconciles_total", "ferrokv_operator_cluster_healthy_voters"} <= operator_metric_names()
    assert "etcd_server_quota_backend_bytes" not in node_metric_names()


def test_rules_and_dashboard_name_only_metrics_that_are_exported():
    exported = node_metric_names() | operator_metric_names() | {"up"}
    queries = [r["expr"] for g in rule_groups() for r in g["rules"]] + dashboard_queries(dashboard())
    used = set().union(*(names_in(q) for q in queries))
    missing = {n for n in used if n not in exported and re.sub(r"_(bucket|sum|count)$", "", n) not in exported}
    assert missing == set()
    assert len(used) > 15


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_config_map_carries_the_sidecar_label():
    (config_map,) = by_kind(render({"grafanaDashboard": {"enabled": True}}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    values = {
        "grafanaDashboard": {
            "enabled": True,
            "labelKey": "grafana.io/dashboard",
            "labelValue": "ferrokv",
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "Databases"},
        }
    }
    (config_map,) = by_kind(render(values), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana.io/dashboard"] == "ferrokv"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Databases"}


def test_dashboard_is_grafana_json_with_every_query_selected():
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    queries = dashboard_queries(board)
    for query in queries:
        assert "FERROKV_" not in query
        assert "vector(2147483648)" in query or 'job="ferrokv' in query, query


def test_dashboard_queries_follow_the_selectors_from_values():
    board = dashboard({"prometheusRule": {"memberSelector": 'job="etcd",env="p<1"', "operatorSelector": 'job="ops"'}})
    queries = dashboard_queries(board)
    member_queries = [q for q in queries if "etcd_" in q or "up{" in q]
    operator_queries = [q for q in queries if "ferrokv_operator_" in q]
    assert member_queries and operator_queries
    assert all('{job="etcd",env="p<1"' in q for q in member_queries)
    assert all('{job="ops"' in q for q in operator_queries)


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"memberMonitor": {"kind": "Deployment"}},
        {"memberMonitor": {"interval": "often"}},
        {"memberMonitor": {"job": 'a"b'}},
        {"memberMonitor": {"namespaces": [""]}},
        {"serviceMonitor": {"job": ""}},
        {"prometheusRule": {"quotaBackendBytes": "2Gi"}},
        {"prometheusRule": {"quotaBackendBytes": 0}},
        {"prometheusRule": {"memberSelector": '{job="x"}'}},
        {"prometheusRule": {"runbooks": True}},
        {"grafanaDashboard": {"labelKey": ""}},
        {"grafanaDashboard": {"labelValue": 1}},
    ],
)
def test_values_schema_refuses_bad_monitoring_values(values):
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_values_schema_accepts_monitoring_values():
    helm.Chart.load(CHART).validate_schema(
        {
            **with_members("ServiceMonitor"),
            "prometheusRule": {"enabled": True, "memberSelector": 'job="etcd"', "quotaBackendBytes": 8589934592},
        }
    )
