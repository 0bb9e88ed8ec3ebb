"""A Kubernetes container spec as ``docker run`` flags, and its probes run like a kubelet.

Used by tests/test_containers.py to run deploy/k8s/deployment.yaml's container under
Docker with the settings the manifest gives it, read from the file itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_DEPLOYMENT = REPO / "deploy" / "k8s" / "deployment.yaml"


def k8s_container() -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all(K8S_DEPLOYMENT.read_text()) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def quantity(value: str | int) -> float:
    """Kubernetes quantities: '2', '500m', '2Gi', '256Mi' -> a number (bytes or cores)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult
    return float(text)


def docker_args_for(pod: dict, c: dict) -> tuple[list[str], dict[str, Any]]:
    """The ``docker run`` flags that give the container what the pod spec gives it."""
    args: list[str] = []
    limits = c["resources"]["limits"]
    for env in c.get("env", []):
        if "value" in env:
            args += ["-e", f"{env['name']}={env['value']}"]
            continue
        ref = env["valueFrom"]
        if "resourceFieldRef" in ref:  # limits.cpu with divisor 1: rounded up
            field = ref["resourceFieldRef"]["resource"].split(".", 1)[1]
            divisor = quantity(ref["resourceFieldRef"].get("divisor", "1"))
            args += ["-e", f"{env['name']}={math.ceil(quantity(limits[field]) / divisor)}"]
        elif "secretKeyRef" in ref:
            assert ref["secretKeyRef"].get("optional"), f"{env['name']}: a required secret"
            # optional and absent in this test: the variable is not set at all
    pod_sc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    args += ["--user", f"{user}:{group}"]
    if "fsGroup" in pod_sc:
        args += ["--group-add", str(pod_sc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        assert "emptyDir" in vol, f"{mount['name']}: only emptyDir volumes are run here"
        size = int(quantity(vol["emptyDir"].get("sizeLimit", "64Mi")))
        args += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
    args += [
        "--cpus",
        str(quantity(limits["cpu"])),
        "--memory",
        str(int(quantity(limits["memory"]))),
    ]
    facts = {"user": user, "run_as_non_root": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))}
    return args, facts


def probe_until(url: str, probe: dict, *, budget_s: float) -> float:
    """Run an httpGet probe until it passes within ``budget_s``; returns the seconds taken.

    Polled every second, faster than the kubelet, so the budget is in time, not in failed
    polls: a startup probe's is ``periodSeconds x failureThreshold``, what the kubelet
    allows; a readiness probe's failures only keep the pod out of the Service (counting
    them at one poll a second cut a slow model load off after 2 s in a CI run)."""
    path, period = probe["httpGet"]["path"], probe.get("periodSeconds", 10)
    timeout = probe.get("timeoutSeconds", 1)
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if 200 <= httpx.get(f"{url}{path}", timeout=timeout).status_code < 400:
                return time.monotonic() - t0
        assert time.monotonic() - t0 < budget_s, f"{path} probe failed for {budget_s:.0f} s"
        time.sleep(min(period, 1.0))  # poll faster than the kubelet; same failure budget
