"""cluster/ files: they parse, follow their schemas, and can run the shipped configs.

Nobody runs these files on a cloud in CI, so this is what keeps them honest: Ray's own launcher schema, the GPU count
of each instance type, spot only where engines run, KubeRay field names (a CRD silently drops a misspelt field),
KubeRay's custom-resource string format, and, for every shipped config that pins roles to node types
(`cluster.learner_resources` / `cluster.engine_resources`), that its learner group and its largest rollout fleet
fit the node types of every cluster file. The last tests break a file on purpose to show the checks bite.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.placement import engine_bundle
from rlpt.config import RlptConfig, load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = {"raycluster": CLUSTER / "kuberay" / "raycluster.yaml", "rayjob": CLUSTER / "kuberay" / "rayjob.yaml"}
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

# Public specs of the instance / machine types we allow: (GPUs, vCPUs).
INSTANCE_TYPES: dict[str, dict[str, tuple[int, int]]] = {
    "aws": {"m5.4xlarge": (0, 16), "m5.8xlarge": (0, 32), "p4d.24xlarge": (8, 96), "p4de.24xlarge": (8, 96),
            "p5.48xlarge": (8, 192), "g5.12xlarge": (4, 48), "g5.48xlarge": (8, 192), "g6e.48xlarge": (8, 192), "g5.2xlarge": (1, 8)},
    "gcp": {"n2-standard-16": (0, 16), "n2-standard-32": (0, 32), "a2-highgpu-8g": (8, 96),
            "a2-ultragpu-8g": (8, 96), "a3-highgpu-8g": (8, 208), "g2-standard-8": (1, 8)},
}
# Node type / worker group -> the one rlpt custom resource it carries (one unit per GPU).
LAUNCHER_ROLES = {"learner_gpu": "rlpt_learner", "rollout_gpu": "rlpt_rollout", "reward_gpu": "rlpt_reward"}
KUBERAY_ROLES = {"learner-gpu": "rlpt_learner", "rollout-gpu": "rlpt_rollout", "reward-gpu": "rlpt_reward"}
RLPT_RESOURCES = {"rlpt_learner", "rlpt_rollout", "rlpt_reward"}

# KubeRay ray.io/v1 field names (ray-operator/apis/ray/v1/raycluster_types.go, rayjob_types.go, KubeRay 1.1-1.4).
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "upgradeStrategy",
                   "authOptions"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType", "resources", "labels"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "rayStartParams", "template", "scaleStrategy", "numOfHosts", "resources", "labels"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                      "upscalingMode", "env", "envFrom", "volumeMounts", "version"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
# Ray runtime_env fields (ray.runtime_env.RuntimeEnv) an rlpt job could use.
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "excludes", "pip", "uv", "conda", "env_vars", "container",
                    "image_uri", "config", "py_executable", "java_jars", "nsight", "worker_process_setup_hook"}
SPOT_NODE_SELECTORS = {("cloud.google.com/gke-spot", "true"), ("cloud.google.com/gke-preemptible", "true"),
                       ("eks.amazonaws.com/capacityType", "SPOT"), ("karpenter.sh/capacity-type", "spot")}


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]  # Ray resources one node of this type offers
    max_count: int               # nodes of this type at most (head: 1)


# -------------------------------------------------------------------------------------------------------- helpers
def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d.split("==")[1] for d in deps if d.startswith("ray[")]
    return pin


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number of units ("90", 8, "500m"); memory suffixes are not needed here."""
    s = str(value)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def kuberay_custom_resources(ray_start_params: dict[str, Any], where: str) -> dict[str, int]:
    """The `resources` rayStartParam, read the way Ray's KubeRay autoscaler reads it
    (ray/autoscaler/_private/kuberay/autoscaling_config.py: drop the outer quotes and the backslashes, then JSON)."""
    raw = ray_start_params.get("resources")
    if raw is None:
        return {}
    assert isinstance(raw, str) and raw.startswith('"') and raw.endswith('"'), \
        f"{where}: rayStartParams.resources must look like '\"{{\\\"name\\\": 8}}\"', got {raw!r}"
    parsed = json.loads(raw[1:-1].replace("\\", ""))
    assert isinstance(parsed, dict) and all(isinstance(k, str) and type(v) is int for k, v in parsed.items()), \
        f"{where}: rayStartParams.resources must be a JSON object of integers, got {parsed!r}"
    return parsed


def launcher_node_types(data: dict[str, Any]) -> list[NodeType]:
    out = []
    for name, nt in data["available_node_types"].items():
        count = 1 if name == data["head_node_type"] else nt.get("max_workers", data["max_workers"])
        out.append(NodeType(name, {k: float(v) for k, v in nt["resources"].items()}, count))
    return out


def kuberay_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def kuberay_node_types(spec: dict[str, Any]) -> list[NodeType]:
    """Ray resources of each group the way KubeRay derives them: num-cpus / num-gpus params, else the container's
    limits (cpu, nvidia.com/gpu); custom resources from the `resources` param."""
    groups = [("head", spec["headGroupSpec"], 1)]
    groups += [(g["groupName"], g, g["maxReplicas"]) for g in spec.get("workerGroupSpecs", [])]
    out = []
    for name, g, count in groups:
        params = g.get("rayStartParams", {})
        limits = g["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        res = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))),
               "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
        res.update({k: float(v) for k, v in kuberay_custom_resources(params, f"group {name}").items()})
        out.append(NodeType(name, res, count))
    return out


def cluster_node_types() -> dict[str, list[NodeType]]:
    """Every cluster in cluster/: the two launcher files and the cluster spec of each KubeRay manifest."""
    out = {name: launcher_node_types(load(p)) for name, p in LAUNCHERS.items()}
    out.update({name: kuberay_node_types(kuberay_cluster_spec(load(p))) for name, p in KUBERAY.items()})
    return out


def fit(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many copies of `bundle` one node holds (Ray packs a bundle only where every resource is there)."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 10**6


def learner_bundle(cfg: RlptConfig) -> dict[str, float]:
    # The bundle actors/placement.py:learner_placement_group asks for per rank.
    c = cfg.cluster
    return {"CPU": 1.0, **({"GPU": c.gpus_per_learner} if c.gpus_per_learner else {}), **c.learner_resources}


def engines_needed(cfg: RlptConfig) -> int:
    """Most engine-shaped actors at once: the fleet's max, plus the reference actor, which takes engine_options
    (mirrors actors/launch.py:needs_reference)."""
    ref = cfg.algorithm.name == "dpo" or (cfg.algorithm.name == "grpo" and cfg.algorithm.grpo.beta > 0)
    return cfg.fleet_bounds()[1] + int(ref)


def pinned_configs() -> list[Path]:
    """Shipped configs that put roles on node types through custom resources (the others run anywhere)."""
    clusters = {p: load_config(p, []).cluster for p in CONFIGS}
    return [p for p, c in clusters.items() if c.learner_resources or c.engine_resources]


# --------------------------------------------------------------------------------------------------- checkers
def check_launcher(data: dict[str, Any], provider: str) -> None:
    for key in ("cluster_name", "provider", "auth", "max_workers", "idle_timeout_minutes", "available_node_types",
                "head_node_type", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in data, f"missing top-level key {key}"
    prov = data["provider"]
    assert prov["type"] == provider and prov.get("region")
    if provider == "aws":
        assert prov.get("cache_stopped_nodes") is False, "terminate idle nodes (cache_stopped_nodes: false)"
    else:
        assert "project_id" in prov and prov["availability_zone"].startswith(prov["region"])
    assert data["auth"].get("ssh_user")
    types = data["available_node_types"]
    assert set(types) == {"head", "learner_gpu", "rollout_gpu", "reward_gpu"} and data["head_node_type"] == "head"
    assert data["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n != "head"), \
        "global max_workers caps the node types' max_workers below what they declare"
    for name, t in types.items():
        assert t.get("min_workers", 0) <= t.get("max_workers", data["max_workers"]), name
        spot = is_spot(t["node_config"], provider)
        assert spot == (name == "rollout_gpu"), f"{name}: spot={spot}; only rollout_gpu may be spot/preemptible"
        gpus, vcpus = machine_gpus_cpus(t["node_config"], provider)
        res = t["resources"]
        assert res.get("GPU", 0) == gpus, f"{name}: declares GPU={res.get('GPU', 0)}, the machine has {gpus}"
        assert 0 < res.get("CPU", 0) <= vcpus, f"{name}: CPU={res.get('CPU')} vs {vcpus} vCPUs"
        custom = {k for k in res if k.startswith("rlpt_")}
        want = {LAUNCHER_ROLES[name]} if name in LAUNCHER_ROLES else set()
        assert custom == want, f"{name}: rlpt resources {custom}, expected {want}"
        for k in custom:
            assert res[k] == gpus, f"{name}: {k}={res[k]} should be one unit per GPU ({gpus})"
        if provider == "gcp" and gpus:
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", f"{name}: GPU VMs need it"
    setup = " ".join(data["setup_commands"])
    assert "rlpt[gpu]" in setup, "setup_commands must install rlpt with the gpu extra"
    assert any(str(v) == "." for v in (data.get("file_mounts") or {}).values()), "the repo must be file-mounted"
    head_cmd = " ".join(data["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "0.0.0.0" not in head_cmd, \
        "the job server runs arbitrary code: bind it to localhost, reach it through `ray dashboard` (SSH)"
    assert ray_pin() in data["docker"]["image"], f"docker image must carry Ray {ray_pin()}"


def is_spot(node_config: dict[str, Any], provider: str) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    sched = node_config.get("scheduling", {})
    assert isinstance(sched, dict), "GCP `scheduling` is an object, not a list (ray-project/ray#46248)"
    spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
    if spot:
        assert sched.get("automaticRestart") is False and sched.get("onHostMaintenance") == "TERMINATE", \
            "GCP Spot/preemptible VMs need automaticRestart: false and onHostMaintenance: TERMINATE"
    return spot


def machine_gpus_cpus(node_config: dict[str, Any], provider: str) -> tuple[int, int]:
    kind = node_config["InstanceType" if provider == "aws" else "machineType"]
    assert kind in INSTANCE_TYPES[provider], f"unknown {provider} type {kind}: add its GPUs/vCPUs to INSTANCE_TYPES"
    gpus, cpus = INSTANCE_TYPES[provider][kind]
    gpus += sum(a["acceleratorCount"] for a in node_config.get("guestAccelerators", []))
    return gpus, cpus


def check_kuberay_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, f"{where}: unknown RayCluster spec fields {set(spec) - RAYCLUSTER_SPEC}"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: enableInTreeAutoscaling must be true"
    opts = spec.get("autoscalerOptions", {})
    assert set(opts) <= AUTOSCALER_OPTIONS, f"{where}: unknown autoscalerOptions {set(opts) - AUTOSCALER_OPTIONS}"
    assert opts.get("upscalingMode", "Default") in {"Default", "Aggressive", "Conservative"}
    assert spec["rayVersion"] == ray_pin(), f"{where}: rayVersion {spec['rayVersion']} != Ray pin {ray_pin()}"
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, f"{where}: unknown headGroupSpec fields {set(head) - HEAD_GROUP}"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: keep the job server off the network"
    groups = spec["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == list(KUBERAY_ROLES), f"{where}: worker groups"
    images = {head["template"]["spec"]["containers"][0]["image"]}
    for g in [head, *groups]:
        name = g.get("groupName", "head")
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), f"{where}/{name}: params are strings"
        images.add(g["template"]["spec"]["containers"][0]["image"])
    assert len(images) == 1 and ray_pin() in images.pop(), f"{where}: one image for all groups, with Ray {ray_pin()}"
    assert kuberay_custom_resources(head["rayStartParams"], f"{where}/head").keys().isdisjoint(RLPT_RESOURCES)
    for g in groups:
        name = g["groupName"]
        assert set(g) <= WORKER_GROUP, f"{where}/{name}: unknown fields {set(g) - WORKER_GROUP}"
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], f"{where}/{name}: replicas"
        pod = g["template"]["spec"]
        res = pod["containers"][0]["resources"]
        gpus = int(quantity(res["limits"]["nvidia.com/gpu"]))
        assert gpus > 0 and quantity(res.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus, \
            f"{where}/{name}: nvidia.com/gpu limits and requests must agree"
        custom = kuberay_custom_resources(g["rayStartParams"], f"{where}/{name}")
        assert custom == {KUBERAY_ROLES[name]: gpus}, \
            f"{where}/{name}: rayStartParams.resources {custom} should be {{{KUBERAY_ROLES[name]}: {gpus}}}"
        selectors = set((pod.get("nodeSelector") or {}).items())
        spot = bool(selectors & SPOT_NODE_SELECTORS)
        assert spot == (name == "rollout-gpu"), f"{where}/{name}: spot={spot}; only rollout-gpu may be spot"


# ------------------------------------------------------------------------------------------------------ tests
def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    assert {*LAUNCHERS.values(), *KUBERAY.values(), RUNTIME_ENV} <= set(files)
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
        assert docs and all(isinstance(d, dict) for d in docs), f"{f}: every document must be a mapping"


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_file_matches_rays_schema(provider):
    """Ray's own schema for `ray up` files (the one `ray up` validates against), read from the installed Ray."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    schema = json.loads((Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(LAUNCHERS[provider]), schema)


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_file_node_types(provider):
    check_launcher(load(LAUNCHERS[provider]), provider)


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_manifest(name):
    docs = list(yaml.safe_load_all(KUBERAY[name].read_text()))
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == {"raycluster": "RayCluster", "rayjob": "RayJob"}[name]
    assert doc["metadata"]["name"]
    check_kuberay_cluster_spec(kuberay_cluster_spec(doc), name)


def test_rayjob_runs_a_shipped_config_with_the_raycluster_groups():
    job = load(KUBERAY["rayjob"])["spec"]
    assert set(job) <= RAYJOB_SPEC, f"unknown RayJob spec fields {set(job) - RAYJOB_SPEC}"
    assert job["shutdownAfterJobFinishes"] is True and job.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    words = shlex.split(job["entrypoint"])
    assert "train" in words, job["entrypoint"]
    args = words[words.index("train") + 1:]
    config = next(w for w in args if w.endswith(".yaml"))
    path = ROOT / config[config.index("configs/"):]
    assert path.is_file(), f"entrypoint config {config} is not in configs/"
    cfg = load_config(path, [w for w in args if "=" in w])  # the overrides must be valid keys too
    assert Path(cfg.run.root).is_absolute(), "run.root must be a shared absolute path in a RayJob"
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert isinstance(env, dict) and set(env) <= RUNTIME_ENV_KEYS
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values()), "Ray wants string env var values"
    assert kuberay_node_types(job["rayClusterSpec"]) == kuberay_node_types(load(KUBERAY["raycluster"])["spec"])


def test_runtime_env_example():
    env = load(RUNTIME_ENV)
    assert set(env) <= RUNTIME_ENV_KEYS, f"not runtime_env fields: {set(env) - RUNTIME_ENV_KEYS}"
    assert env["working_dir"] == "."
    assert {".venv/", ".git/", "runs/"} <= set(env["excludes"])
    assert env["env_vars"] and all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items())


def test_gpu_recipes_pin_roles_to_node_types():
    """The fit test below is only as good as the configs it sees: every GPU recipe names the custom resources."""
    gpu = [p for p in CONFIGS if p.stem.endswith("_gpu")]
    assert len(gpu) >= 4
    for p in gpu:
        c = load_config(p, []).cluster
        assert set(c.learner_resources) == {"rlpt_learner"} and set(c.engine_resources) == {"rlpt_rollout"}, p
    assert set(gpu) <= set(pinned_configs())


@pytest.mark.parametrize("config", pinned_configs(), ids=lambda p: str(p.relative_to(ROOT / "configs")))
@pytest.mark.parametrize("cluster", sorted([*LAUNCHERS, *KUBERAY]))
def test_shipped_config_fits_cluster(config, cluster):
    cfg = load_config(config, [])
    nodes = cluster_node_types()[cluster]
    for res in {**cfg.cluster.learner_resources, **cfg.cluster.engine_resources}:
        assert any(res in n.resources for n in nodes), f"{config.name}: resource {res} exists on no node type"
    # learners: num_ranks bundles in total (one placement group), on node types that carry the learner resources
    lb = learner_bundle(cfg)
    learner_slots = sum(fit(lb, n.resources) * n.max_count for n in nodes)
    assert learner_slots >= cfg.learner.num_ranks, f"{config.name}: {cfg.learner.num_ranks} learners x {lb}, " \
                                                   f"room for {learner_slots} on {cluster}"
    learner_gpus = sum(n.resources.get("GPU", 0) * n.max_count for n in nodes if fit(lb, n.resources))
    assert cfg.learner.num_ranks * cfg.cluster.gpus_per_learner <= learner_gpus
    # engines: one fits on a node of some type, and the largest fleet (+ reference) fits at max nodes
    eb = engine_bundle(cfg)
    assert max(fit(eb, n.resources) for n in nodes) >= 1, f"{config.name}: no node holds one engine {eb}"
    engine_slots = sum(fit(eb, n.resources) * n.max_count for n in nodes)
    assert engine_slots >= engines_needed(cfg), f"{config.name}: {engines_needed(cfg)} engines x {eb}, room for " \
                                                f"{engine_slots} on {cluster}"
    # learners and engines never share a node type (that is what the custom resources are for)
    assert not [n.name for n in nodes if fit(lb, n.resources) and fit(eb, n.resources)]
    # CPU actors (verifiers) fit in what is left
    cpus = sum(n.resources.get("CPU", 0) * n.max_count for n in nodes)
    assert cpus - cfg.learner.num_ranks - engines_needed(cfg) >= cfg.verifier.num_workers


# ------------------------------------------------------------------------------- the checks catch mismatches
def _mutated(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with the value at `path` set (removed when value is ...). Path: keys joined by " > "
    (Kubernetes keys contain "/" and "."), list indices as numbers."""
    out = copy.deepcopy(data)
    *parents, last = path.split(" > ")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


AWS_BREAKS = [  # (path, value, the error it must produce)
    ("available_node_types > learner_gpu > resources > GPU", 4, "declares GPU=4, the machine has 8"),
    ("available_node_types > rollout_gpu > node_config > InstanceType", "g5.12xlarge",
     "declares GPU=8, the machine has 4"),
    ("available_node_types > learner_gpu > node_config > InstanceMarketOptions", {"MarketType": "spot"},
     "learner_gpu: spot=True"),
    ("available_node_types > rollout_gpu > node_config > InstanceMarketOptions", ..., "rollout_gpu: spot=False"),
    ("available_node_types > rollout_gpu > resources > rlpt_learner", 8, "rollout_gpu: rlpt resources"),
    ("available_node_types > rollout_gpu > resources > rlpt_rollout", 4, "one unit per GPU"),
    ("max_workers", 3, "global max_workers caps"),
    ("head_start_ray_commands > 1", "ray start --head --dashboard-host=0.0.0.0", "bind it to localhost"),
    ("setup_commands", ["pip install rlpt"], "gpu extra"),
]


@pytest.mark.parametrize("path,value,error", AWS_BREAKS, ids=[b[0].rsplit(" > ", 1)[-1] + "=" + str(b[1])[:12]
                                                               for b in AWS_BREAKS])
def test_launcher_checks_catch(path, value, error):
    with pytest.raises(AssertionError, match=error):
        check_launcher(_mutated(load(LAUNCHERS["aws"]), path, value), "aws")


def test_gcp_scheduling_as_a_list_is_caught():
    broken = _mutated(load(LAUNCHERS["gcp"]), "available_node_types > rollout_gpu > node_config > scheduling",
                      [{"preemptible": True}, {"onHostMaintenance": "TERMINATE"}])
    with pytest.raises(AssertionError, match="object, not a list"):
        check_launcher(broken, "gcp")


LEARNER_POD = "workerGroupSpecs > 0 > template > spec"
ROLLOUT_POD = "workerGroupSpecs > 1 > template > spec"
KUBERAY_BREAKS = [
    (f"{LEARNER_POD} > containers > 0 > resources", {"limits": {"cpu": "90", "nvidia.com/gpu": "4"}},
     r"resources \{'rlpt_learner': 8\} should be \{rlpt_learner: 4\}"),
    (f"{LEARNER_POD} > containers > 0 > resources > requests > nvidia.com/gpu", "4",
     "limits and requests must agree"),
    ("workerGroupSpecs > 1 > rayStartParams > resources", '{"rlpt_rollout": 8}', "must look like"),
    ("workerGroupSpecs > 1 > rayStartParams > resources", '"{\\"rlpt_rollout\\": 7.5}"', "JSON object of integers"),
    ("enableInTreeAutoscaling", False, "must be true"),
    ("enableInTreeAutoScaling", True, "unknown RayCluster spec fields"),
    ("workerGroupSpecs > 1 > maxReplica", 3, "unknown fields"),
    (f"{LEARNER_POD} > nodeSelector", {"cloud.google.com/gke-spot": "true"}, "learner-gpu: spot=True"),
    (f"{ROLLOUT_POD} > nodeSelector > cloud.google.com/gke-spot", ..., "rollout-gpu: spot=False"),
    (f"{ROLLOUT_POD} > containers > 0 > image", "rayproject/ray:2.60.0-py311-gpu", "one image"),
    ("rayVersion", "2.9.0", "rayVersion"),
    ("headGroupSpec > serviceType", "LoadBalancer", "off the network"),
]


@pytest.mark.parametrize("path,value,error", KUBERAY_BREAKS, ids=[f"{i}-" + b[0].rsplit(" > ", 1)[-1]
                                                                  for i, b in enumerate(KUBERAY_BREAKS)])
def test_kuberay_checks_catch(path, value, error):
    with pytest.raises(AssertionError, match=error):
        check_kuberay_cluster_spec(_mutated(load(KUBERAY["raycluster"])["spec"], path, value), "mutated")


def test_fit_checks_catch_a_fleet_too_large_and_a_misspelt_resource():
    recipe = ROOT / "configs/grpo/dapo_qwen25_math_7b_gpu.yaml"
    nodes = cluster_node_types()["aws"]
    ok = load_config(recipe, [])
    assert sum(fit(engine_bundle(ok), n.resources) * n.max_count for n in nodes) >= engines_needed(ok)
    big = load_config(recipe, ["cluster.rollout.max=9"])  # 9 TP-4 engines > 4 nodes x 2
    assert sum(fit(engine_bundle(big), n.resources) * n.max_count for n in nodes) < engines_needed(big)
    typo = load_config(recipe, ["cluster.engine_resources={rlpt_rolout: 1}"])
    assert max(fit(engine_bundle(typo), n.resources) for n in nodes) == 0
    ranks = load_config(recipe, ["learner.num_ranks=17"])  # 2 learner nodes x 8 GPUs
    assert sum(fit(learner_bundle(ranks), n.resources) * n.max_count for n in nodes) < ranks.learner.num_ranks
