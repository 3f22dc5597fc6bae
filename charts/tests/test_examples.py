"""Example KVClusters checked against the CRD as the API server would: defaults applied, the
OpenAPI schema, then every CEL rule (`x-kubernetes-validations`) evaluated with cel-python."""

from __future__ import annotations

import copy

import celpy
import jsonschema
import pytest
import yaml

from conftest import EXAMPLES, load_all


def openapi_to_jsonschema(schema: dict) -> dict:
    """The CRD's structural OpenAPI v3 schema as plain JSON Schema: `nullable` becomes a null
    type, int-or-string becomes either, Kubernetes extensions are dropped."""
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema: dict, value):
    """Structural defaulting: fill absent properties that have a default, recursively."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def cel_violations(schema: dict, value, old=None, path: str = "") -> list[str]:
    """Messages of every CEL rule that `value` breaks. Transition rules (those naming
    `oldSelf`) run only on an update, where the old object has a value at the same place."""
    messages = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule["rule"]:
            if old is None:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old)
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate(activation):
            messages.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                old_sub = old.get(name) if isinstance(old, dict) else None
                messages += cel_violations(sub, value[name], old_sub, f"{path}.{name}")
    return messages


def admit(crd: dict, obj: dict, old: dict | None = None) -> list[str]:
    """What the API server would say about creating `obj`, or updating `old` to it: [] when
    it is accepted."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1]]
    schema = version["schema"]["openAPIV3Schema"]
    obj = apply_defaults(schema, copy.deepcopy(obj))
    if old is not None:
        old = apply_defaults(schema, copy.deepcopy(old))
    validator = jsonschema.Draft7Validator(openapi_to_jsonschema(schema))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors or cel_violations(schema, obj, old)


def example_clusters() -> list[dict]:
    return [doc for path in sorted(EXAMPLES.glob("*.yaml")) for doc in load_all(path.read_text())]


def test_examples_hold_a_three_member_cluster():
    (example,) = [o for o in example_clusters() if o["metadata"]["name"] == "example"]
    assert example["kind"] == "KVCluster"
    assert example["spec"]["replicas"] == 3


@pytest.mark.parametrize("obj", example_clusters(), ids=lambda o: o["metadata"]["name"])
def test_every_example_is_accepted_by_the_crd(crd, obj):
    assert obj["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert obj["kind"] == crd["spec"]["names"]["kind"]
    assert admit(crd, obj) == []


def with_spec(spec: dict) -> dict:
    return {"apiVersion": "ferrokv.io/v1alpha1", "kind": "KVCluster", "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize("replicas", [1, 3, 5, 7, 9])
def test_odd_replica_counts_are_accepted(crd, replicas):
    assert admit(crd, with_spec({"replicas": replicas})) == []


@pytest.mark.parametrize("replicas", [2, 4, 6, 8])
def test_even_replica_counts_are_refused_with_the_reason(crd, replicas):
    (message,) = admit(crd, with_spec({"replicas": replicas}))
    assert message.startswith(".spec.replicas: replicas must be odd")
    assert "quorum" in message


@pytest.mark.parametrize("replicas", [0, 11, -1])
def test_replica_counts_out_of_range_are_refused_by_the_schema(crd, replicas):
    errors = admit(crd, with_spec({"replicas": replicas}))
    assert errors and errors[0].startswith("spec.replicas")


def test_an_empty_spec_defaults_to_three_members(crd):
    assert admit(crd, with_spec({})) == []


def test_election_timeout_shorter_than_five_heartbeats_is_refused(crd):
    bad = with_spec({"tuning": {"heartbeatIntervalMillis": 100, "electionTimeoutMillis": 300}})
    (message,) = admit(crd, bad)
    assert "electionTimeoutMillis must be at least 5 times" in message
    good = with_spec({"tuning": {"heartbeatIntervalMillis": 100, "electionTimeoutMillis": 500}})
    assert admit(crd, good) == []


def test_unknown_compaction_mode_is_refused(crd):
    assert admit(crd, with_spec({"tuning": {"autoCompactionMode": "weekly"}}))


def test_scale_subresource_and_printer_columns(crd):
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Replicas", "Ready", "Leader", "Version", "Phase", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["kvc"]


def test_scaling_an_existing_cluster_is_accepted_only_to_odd_counts(crd):
    three = with_spec({"replicas": 3})
    assert admit(crd, with_spec({"replicas": 5}), old=three) == []
    (message,) = admit(crd, with_spec({"replicas": 4}), old=three)
    assert "must be odd" in message


def test_storage_cannot_change_after_creation(crd):
    small = with_spec({"storage": {"data": {"size": "8Gi"}, "wal": {"size": "2Gi"}}})
    large = with_spec({"storage": {"data": {"size": "16Gi"}, "wal": {"size": "2Gi"}}})
    assert admit(crd, large) == []
    (message,) = admit(crd, large, old=small)
    assert message.startswith(".spec.storage: storage cannot change")
    assert admit(crd, small, old=small) == []


def test_tls_example_turns_on_both_sides_and_auth():
    (example,) = [o for o in example_clusters() if o["metadata"]["name"] == "example-tls"]
    assert set(example["spec"]["tls"]) == {"client", "peer"}
    assert example["spec"]["auth"]["enabled"] is True


@pytest.mark.parametrize(
    "source",
    [{}, {"auto": {}, "secretRef": {"name": "s"}}, {"secretRef": {"name": "s"}, "certManager": {"issuerRef": {"name": "i"}}}],
)
def test_a_tls_side_names_exactly_one_source(crd, source):
    (message,) = admit(crd, with_spec({"tls": {"client": source}}))
    assert "exactly one of auto, secretRef and certManager" in message


@pytest.mark.parametrize(
    "source", [{"auto": {}}, {"secretRef": {"name": "s"}}, {"certManager": {"issuerRef": {"name": "i"}}}]
)
def test_each_tls_source_alone_is_accepted(crd, source):
    assert admit(crd, with_spec({"tls": {"client": source, "peer": source}})) == []


def test_tls_sides_cannot_be_turned_on_or_off_after_creation(crd):
    plain = with_spec({})
    client = with_spec({"tls": {"client": {"auto": {}}}})
    (message,) = admit(crd, client, old=plain)
    assert "cannot be added or removed" in message
    (message,) = admit(crd, plain, old=client)
    assert "cannot be added or removed" in message
    switched = with_spec({"tls": {"client": {"secretRef": {"name": "mine"}}}})
    assert admit(crd, switched, old=client) == []


def test_auth_needs_the_root_password_secret(crd):
    (message,) = admit(crd, with_spec({"auth": {"enabled": True}}))
    assert "rootPasswordSecret" in message
    secret = {"name": "root", "key": "password"}
    assert admit(crd, with_spec({"auth": {"enabled": True, "rootPasswordSecret": secret}})) == []
