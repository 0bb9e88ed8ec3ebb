"""deploy/k8s against the Kubernetes JSON schemas shipped by kubernetes-validate (strict
mode: unknown fields fail) for the oldest and newest API versions we target, plus
semantic asserts: probes, security context, resources, HPA/PDB/Service wiring, the GPU
variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_files import (
    APP_GRACE_S,
    APP_PORT,
    K8S,
    K8S_VERSIONS,
    SERVE_CMD,
    UPLOAD_LIMIT,
    container_env,
    containers_of,
    k8s_files,
    load_all_yaml,
    load_yaml,
    need,
)
from tests.k8s_spec import quantity

# ---------------------------------------------------------------------------
# (3) Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in k8s_files():
        for doc in load_all_yaml(path):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ModuleNotFoundError:
        need(
            "kubernetes-validate",
            False,
            "pip install kubernetes-validate (ships the Kubernetes JSON schemas)",
        )
        raise
    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_k8s_schema(path: Path, version: str) -> None:
    kv = _kv()
    from kubernetes_validate import utils

    target = utils.latest_version() if version == "latest" else version
    for doc in load_all_yaml(path):
        assert "namespace" not in doc["metadata"], "manifests are namespace-less"
        try:
            kv.validate(doc, target, strict=True)
        except kv.ValidationError as e:
            pytest.fail(
                f"{path.name} {doc['kind']} vs {target}: {'.'.join(map(str, e.path))}: {e.message}"
            )


def test_k8s_schema_is_strict(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kv = _kv()
    broken = json.loads(json.dumps(k8s[("Deployment", "mobilenet-serve")]))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbee"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = load_yaml(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    assert "namespace" not in kust
    assert sorted(kust["resources"]) == sorted(p.name for p in k8s_files())


@pytest.mark.parametrize("name", ["mobilenet-serve", "mobilenet-serve-gpu"])
def test_k8s_deployment(k8s: dict[tuple[str, str], dict[str, Any]], name: str) -> None:
    dep = k8s[("Deployment", name)]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert pod.get("automountServiceAccountToken") is False
    (c,) = containers_of(dep)
    assert c["args"] == SERVE_CMD[1:], "same command as the image's CMD"
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]], "writable /tmp on a read-only root"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == APP_PORT
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ("http", APP_PORT)
    res = c["resources"]
    for kind in ("requests", "limits"):
        assert res[kind]["cpu"] and res[kind]["memory"], res
    assert quantity(res["requests"]["cpu"]) <= quantity(res["limits"]["cpu"])
    assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"])
    # Shutdown: preStop sleep (endpoints drain) + app grace < terminationGracePeriodSeconds
    pre = c["lifecycle"]["preStop"]
    if "sleep" in pre:
        sleep_s = float(pre["sleep"]["seconds"])
    else:
        assert pre["exec"]["command"][0] == "sleep", pre
        sleep_s = float(pre["exec"]["command"][-1])
    env = container_env(c)
    grace = float(env.get("MOBILENET_SHUTDOWN_GRACE_S", APP_GRACE_S))
    assert pod["terminationGracePeriodSeconds"] > sleep_s + grace
    assert env["MOBILENET_WEIGHTS_DIR"] == "/app/weights"
    assert env["MOBILENET_MAX_UPLOAD_BYTES"] == str(UPLOAD_LIMIT)
    assert env["MOBILENET_API_KEY"]["secretKeyRef"]["optional"] is True
    # Weights come from the image (no volume) or a PVC mounted there; never fetched at start.
    if "/app/weights" in mounts:
        assert "persistentVolumeClaim" in vols[mounts["/app/weights"]]
    assert "command" not in c and "fetch" not in json.dumps(c)


def test_k8s_gpu_variant(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = k8s[("Deployment", "mobilenet-serve-gpu")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = containers_of(dep)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container_env(c)["MOBILENET_DEVICE"] == "cuda"
    assert c["image"].endswith(":gpu")
    cpu = k8s[("Deployment", "mobilenet-serve")]
    assert containers_of(cpu)[0]["image"].endswith(":cpu")
    assert container_env(containers_of(cpu)[0])["MOBILENET_DEVICE"] == "cpu"


def test_k8s_wiring(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = k8s[("Deployment", "mobilenet-serve")]
    gpu = k8s[("Deployment", "mobilenet-serve-gpu")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    gpu_labels = gpu["spec"]["template"]["metadata"]["labels"]
    hpa = k8s[("HorizontalPodAutoscaler", "mobilenet-serve")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "Deployment",
        dep["metadata"]["name"],
    )
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    )
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = k8s[("PodDisruptionBudget", "mobilenet-serve")]
    sel = pdb["spec"]["selector"]["matchLabels"]
    assert sel.items() <= labels.items(), "PDB selector must match the Deployment's pods"
    assert not sel.items() <= gpu_labels.items(), "PDB is for the CPU replicas"
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "drains must be possible"
    svc = k8s[("Service", "mobilenet-serve")]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= gpu_labels.items()
    port_names = {p["name"] for p in containers_of(dep)[0]["ports"]}
    assert all(p["targetPort"] in port_names | {APP_PORT} for p in svc["spec"]["ports"])
