"""Shared fixtures of the chart and manifest tests: where things are, and how to render them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ferrokv-operator"
CRD_FILE = REPO / "crds" / "kvclusters.ferrokv.io.yaml"
BACKUP_CRD_FILE = REPO / "crds" / "kvclusterbackups.ferrokv.io.yaml"
EXAMPLES = REPO / "examples"

# The Kubernetes versions every object must be valid for.
KUBE_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0"]

RELEASE = "kv-operator"
NAMESPACE = "ferrokv-system"


def load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with `values`, as `helm install` would."""
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(load_all(text))
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="session")
def crd() -> dict:
    (doc,) = load_all(CRD_FILE.read_text())
    return doc


def operator_command() -> list[str]:
    """The operator binary: FERROKV_OPERATOR_BIN, else built with cargo."""
    binary = os.environ.get("FERROKV_OPERATOR_BIN")
    if binary:
        return [binary]
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("set FERROKV_OPERATOR_BIN or put cargo on PATH to build ferrokv-operator")
    return [cargo, "run", "--quiet", "-j", "2", "-p", "ferrokv-operator", "--"]


def render_operator(manifest: Path) -> list[dict]:
    """Every object the operator builds for the KVCluster in `manifest`."""
    result = subprocess.run(
        [*operator_command(), "render", str(manifest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


@pytest.fixture(scope="session")
def operator_built_objects() -> list[dict]:
    """Every object the operator builds for the example cluster."""
    return render_operator(EXAMPLES / "kvcluster.yaml")


@pytest.fixture(scope="session")
def operator_built_tls_objects() -> list[dict]:
    """Every object the operator builds for the TLS example cluster."""
    return render_operator(EXAMPLES / "kvcluster-tls.yaml")
