"""deploy/k8s/ checked statically (no cluster on the development machines): the kinds and files kustomize
needs, probes on the port and paths the worker really serves, the run profiles as ConfigMaps equal to
workers/*.toml, MONITOR_ variables that name real settings, and a KEDA ScaledObject on the real Deployment,
with the chunks topic, consumer group and bootstrap servers the worker uses."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli import _parser
from monitor.edges.health import Readiness, wsgi_app
from monitor.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"  # the CPU profile; the gpu/ overlay patches it


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(directory: Path) -> dict[str, list[dict[str, Any]]]:
    kustomization = _docs(directory / "kustomization.yaml")[0]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in kustomization.get("resources", []):
        if (directory / name).is_file():
            for doc in _docs(directory / name):
                out.setdefault(doc["kind"], []).append(doc)
    return out


def _one(kind: str) -> dict[str, Any]:
    (doc,) = _by_kind(BASE)[kind]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _gpu_patch() -> dict[str, Any]:
    (doc,) = _docs(K8S / "gpu" / "worker-gpu.yaml")
    return doc


def _profile(configmap: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> Settings:
    """The settings a pod gets: the mounted profile, then its MONITOR_ variables (env wins)."""
    path = tmp_path / "worker.toml"
    path.write_text(configmap["data"]["worker.toml"])
    sections: dict[str, dict[str, Any]] = tomllib.loads(path.read_text())
    for key, value in env.items():
        section, field = key.removeprefix("MONITOR_").lower().split("__")
        sections.setdefault(section, {})[field] = value
    return load_settings(path, **sections)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _status(path: str) -> str:
    out: list[str] = []
    wsgi_app(Readiness())({"PATH_INFO": path}, lambda status, headers: out.append(status))  # type: ignore[arg-type,return-value]
    return out[0]


def test_the_kustomizations_name_files_that_exist_and_the_kinds_are_there() -> None:
    for directory in (BASE, K8S / "gpu"):
        kustomization = _docs(directory / "kustomization.yaml")[0]
        assert kustomization["kind"] == "Kustomization"
        for name in kustomization.get("resources", []) + [
            p["path"] for p in kustomization.get("patches", [])
        ]:
            assert (directory / name).exists(), f"{directory}/{name}"
    kinds = _by_kind(BASE)
    assert {k: len(v) for k, v in kinds.items()} == {
        "ConfigMap": 1,
        "Deployment": 1,
        "Service": 1,
        "ScaledObject": 1,
    }


@pytest.mark.parametrize(("profile", "patch"), [("cpu", None), ("gpu", "gpu/profile-gpu.yaml")])
def test_the_profile_configmaps_are_the_run_profiles_verbatim(profile: str, patch: str | None) -> None:
    configmap = _one("ConfigMap") if patch is None else _docs(K8S / patch)[0]
    assert configmap["metadata"]["name"] == _one("ConfigMap")["metadata"]["name"]  # the patch replaces it
    assert configmap["data"]["worker.toml"] == (ROOT / "workers" / f"{profile}.toml").read_text()


def test_the_worker_runs_serve_with_the_mounted_profile() -> None:
    deployment = _one("Deployment")
    container = _container(deployment)
    args = _parser().parse_args(container["args"])
    assert args.command == "serve"
    (mount,) = container["volumeMounts"]
    assert str(args.config) == f"{mount['mountPath']}/worker.toml"
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    for key in _env(container) | _env(_container(_gpu_patch())):
        section, _, field = key.removeprefix("MONITOR_").lower().partition("__")
        assert key.startswith("MONITOR_") and field in type(getattr(Settings(), section)).model_fields, key


@pytest.mark.parametrize("patch", [None, "gpu/profile-gpu.yaml"])
def test_probes_point_at_the_real_port_and_paths(patch: str | None, tmp_path: Path) -> None:
    container = _container(_one("Deployment"))
    configmap = _one("ConfigMap") if patch is None else _docs(K8S / patch)[0]
    settings = _profile(configmap, tmp_path, _env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {
        name: container[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert ports[probe["port"]] == settings.telemetry.metrics_port
    assert _status("/ready").startswith("503")  # a real path of edges.health (not ready: nothing is up)
    assert _status("/live").startswith("200")
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.telemetry.metrics_port


def test_the_service_selects_the_worker_pods() -> None:
    deployment, service = _one("Deployment"), _one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in _container(deployment)["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])


def test_the_scaled_object_scales_the_worker_on_the_chunks_lag(tmp_path: Path) -> None:
    deployment, scaled = _one("Deployment"), _one("ScaledObject")
    settings = _profile(_one("ConfigMap"), tmp_path, _env(_container(deployment)))
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == settings.topics.chunks == Settings().topics.chunks
    assert meta["consumerGroup"] == settings.kafka.group_id == Settings().kafka.group_id
    assert meta["bootstrapServers"] == settings.kafka.bootstrap
    assert int(meta["lagThreshold"]) > 0
    partitions = json.loads((ROOT / "topics" / "topics.json").read_text())["chunks"]["partitions"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions


def test_the_scaled_object_names_the_worker_metric_of_the_lag_it_scales_on() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from monitor import telemetry
    from monitor.edges import lag
    from monitor.settings import TelemetrySettings

    comment = "".join(
        line for line in (BASE / "scaledobject.yaml").read_text().splitlines() if line.startswith("#")
    )
    # KEDA reads committed offsets: the worker's committed lag is that number, its position lag is not
    assert "qta_monitor_consumer_lag_committed" in comment and "qta_monitor_consumer_lag " in comment
    (trigger,) = _one("ScaledObject")["spec"]["triggers"]
    # a partition never committed: KEDA counts its whole log with `earliest`, and so does the worker
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest"
    telemetry.start(Settings(telemetry=TelemetrySettings(metrics_port=0)))
    lag.set_committed_lag({("qta.chunks", 0): 3})
    try:
        exported = generate_latest(REGISTRY).decode()
        found = r'^qta_monitor_consumer_lag_committed\{[^}]*partition="0",topic="qta.chunks"\} 3.0$'
        assert re.search(found, exported, re.M), exported
    finally:
        lag.set_committed_lag({})


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_the_judge_on_cuda(tmp_path: Path) -> None:
    patch = _gpu_patch()
    assert (
        patch["kind"] == "Deployment" and patch["metadata"]["name"] == _one("Deployment")["metadata"]["name"]
    )
    container = _container(patch)
    assert container["name"] == _container(_one("Deployment"))["name"]  # merges into the base container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = _env(_container(_one("Deployment"))) | _env(container)
    settings = _profile(_docs(K8S / "gpu" / "profile-gpu.yaml")[0], tmp_path, env)
    assert (settings.guard.name, settings.guard.device) == ("judge", "cuda")
    (mount,) = container["volumeMounts"]
    assert str(settings.guard.path).startswith(mount["mountPath"])
    volumes = {v["name"] for v in patch["spec"]["template"]["spec"]["volumes"]}
    assert mount["name"] in volumes
