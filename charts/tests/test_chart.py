"""The Helm chart, linted and rendered with the real Helm SDK, and every object it renders
checked against the Kubernetes schemas of each supported version."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import BACKUP_CRD_FILE, CHART, CRD_FILE, KUBE_VERSIONS, NAMESPACE, by_kind, load_all, render


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_lints_clean_in_strict_mode(kube_version):
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [{}, {"replicaCount": 2, "serviceAccount": {"create": False, "name": "ops"}}])
def test_rendered_objects_pass_the_kubernetes_schemas(kube_version, values):
    objects = render(values)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_chart_ships_the_generated_crds():
    chart = helm.Chart.load(CHART)
    shipped = sorted((yaml.safe_load(crd["data"]) for crd in chart.crds), key=lambda c: c["metadata"]["name"])
    generated = sorted(
        (yaml.safe_load(path.read_text()) for path in (CRD_FILE, BACKUP_CRD_FILE)), key=lambda c: c["metadata"]["name"]
    )
    assert shipped == generated


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_passes_the_kubernetes_schemas(kube_version):
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), kube_version, strict=True)
    kubernetes_validate.validate(yaml.safe_load(BACKUP_CRD_FILE.read_text()), kube_version, strict=True)


def test_default_render_has_operator_rbac_and_no_service_monitor():
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"]
    )
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (sa,) = by_kind(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    container = pod["containers"][0]
    assert container["args"][0] == "run"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_rbac_is_least_privilege():
    objects = render()
    rules = [rule for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role") for rule in role["rules"]]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        # Secrets are read one at a time by name (a backup destination's credentials, the root
        # password, certificates), never listed or watched; written only as the certificate
        # Secrets of tls.*.auto (create, and update with the version read), never patched or
        # deleted.
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get", "create", "update"], rule
        if "certificates" in rule["resources"]:
            assert rule["apiGroups"] == ["cert-manager.io"] and rule["verbs"] == ["get", "patch"], rule
    cluster_verbs = {
        (group, resource, verb)
        for role in by_kind(objects, "ClusterRole")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # Children are written by server-side apply: patch, never create, update or delete.
    for resource in ("statefulsets", "services", "configmaps", "poddisruptionbudgets"):
        assert not {v for (_, r, v) in cluster_verbs if r == resource} & {"create", "update", "delete"}
    assert ("", "nodes", "get") in cluster_verbs
    assert not any(r == "nodes" and v != "get" for (_, r, v) in cluster_verbs)
    assert not any(r == "leases" for (_, r, _) in cluster_verbs), "leases belong in the namespaced Role"
    (role,) = by_kind(objects, "Role")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named and named[0]["resourceNames"] == ["ferrokv-operator"]


def test_service_monitor_is_rendered_when_enabled():
    objects = render({"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}})
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {k: endpoint[k] for k in ("port", "path", "interval")} == {"port": "http", "path": "/metrics", "interval": "15s"}
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["ports"][0]["name"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"replicaCount": 0},
        {"image": {"repository": ""}},
        {"serviceMonitor": {"interval": "soon"}},
        {"unknownKey": True},
    ],
)
def test_values_schema_refuses_bad_values(values):
    chart = helm.Chart.load(CHART)
    assert chart.schema is not None
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_values_schema_accepts_the_defaults():
    chart = helm.Chart.load(CHART)
    chart.validate_schema({})
    chart.validate_schema({"replicaCount": 3, "serviceMonitor": {"enabled": True}})


def test_image_values_reach_the_operator_and_its_pods_keep_their_selector_labels():
    # scripts/e2e-real-cluster installs locally built images this way; the e2e fixture finds
    # the operator's pods by app.kubernetes.io/name.
    chart = helm.Chart.load(CHART)
    values = {
        "image": {"repository": "ferrokv-e2e/ferrokv-operator", "tag": "v0.1.0"},
        "memberImage": {"repository": "ferrokv-e2e/ferrokv"},
    }
    chart.validate_schema(values)
    manifests = chart.render(values, name="ferrokv-operator", namespace=NAMESPACE, is_install=True)
    objects = [o for path, text in manifests.items() if not path.endswith(".txt") for o in load_all(text)]
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "ferrokv-operator"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ferrokv-e2e/ferrokv-operator:v0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FERROKV_IMAGE_REPOSITORY"] == "ferrokv-e2e/ferrokv"
