"""Every object the operator builds, as `ferrokv-operator render` prints them for the example
cluster, passes the Kubernetes schemas of each supported version."""

from __future__ import annotations

import kubernetes_validate
import pytest

from conftest import KUBE_VERSIONS


def test_operator_builds_every_child(operator_built_objects):
    kinds = sorted(o["kind"] for o in operator_built_objects)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for obj in operator_built_objects:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "KVCluster" and owner["controller"] is True


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_operator_built_objects_pass_the_kubernetes_schemas(operator_built_objects, kube_version):
    for obj in operator_built_objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_statefulset_volumes_and_probes(operator_built_objects):
    (sts,) = [o for o in operator_built_objects if o["kind"] == "StatefulSet"]
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data", "wal"]
    container = spec["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert f"--data-dir={mounts['data']}" in container["args"]
    assert f"--wal-dir={mounts['wal']}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    (peer,) = [o for o in operator_built_objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"]
    assert peer["spec"]["publishNotReadyAddresses"] is True
    assert spec["serviceName"] == peer["metadata"]["name"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_tls_example_objects_pass_the_kubernetes_schemas(operator_built_tls_objects, kube_version):
    for obj in operator_built_tls_objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_tls_members_mount_their_certificates_and_probe_a_plain_port(operator_built_tls_objects):
    (sts,) = [o for o in operator_built_tls_objects if o["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"]]
    assert secrets == ["example-tls-client-tls", "example-tls-peer-tls"]
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["client-tls"]["readOnly"] is True
    args = container["args"]
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    assert f"--trusted-ca-file={mounts['client-tls']['mountPath']}/ca.crt" in args
    assert any(a.startswith("--advertise-client-urls=https://") for a in args)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    assert ports["metrics"] == 2381
    assert "--listen-metrics-urls=http://0.0.0.0:2381" in args
