"""Infrastructure files: every YAML parses, Serve configs pass Ray's own schema, KubeRay objects pass
KubeRay's v1 CRD schemas strictly and core objects Kubernetes' own, no two objects share a Service,
images come from the configured registry, and versions move in lockstep with pyproject.toml."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SKIP_DIRS = {".venv", ".git", "outputs", "mlruns", "mlartifacts", "node_modules", ".pytest_cache"}

# KubeRay's v1 CRD schemas, extracted at a pinned tag (tests/data/infra/README.md says how).
KUBERAY = json.loads((ROOT / "tests/data/infra/kuberay-crd-schemas.json").read_text())
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
# Kubernetes versions whose schemas kubernetes-validate bundles and the core objects must pass.
K8S_VERSIONS = ("1.30", "1.33", "1.37")

# The one image setting: manifests say ${IMAGE_REGISTRY}/..., `kapply` (infra/README.md) fills it in.
REGISTRY_VAR = "${IMAGE_REGISTRY}"
# A registry host with a port: the case where a naive split on ":" finds the wrong tag.
SAMPLE_REGISTRY = "registry.example.com:5000/ml"
OUR_IMAGES = {"animatediff-ray", "animatediff-mlflow"}

# Where the image puts the repository; manifests name presets by absolute path under it.
APP_DIR = re.search(r"^WORKDIR (\S+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1)


def _pin(package: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


RAY_VERSION = _pin("ray")


def _repo_yaml_files() -> list[Path]:
    # Tracked and untracked-but-not-ignored files: what a fresh clone has. Without git (an
    # unpacked archive), every file outside the usual build and environment folders.
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return sorted(
        ROOT / name
        for name in listed
        if name.endswith((".yaml", ".yml")) and not SKIP_DIRS & set(Path(name).parts)
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; kubectl --validate=strict rejects them."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _docs(path: Path, registry: str | None = None) -> list[dict]:
    text = path.read_text()
    if registry is not None:
        text = text.replace(REGISTRY_VAR, registry)  # what envsubst '${IMAGE_REGISTRY}' does
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]


def _manifests(registry: str | None = None) -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted((INFRA / "k8s").glob("*.yaml"))
        for doc in _docs(path, registry)
    ]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in _manifests() if doc.get("kind") == kind]


def _repo_path(image_path: str) -> Path:
    """The repository file behind an absolute path in the image."""
    assert image_path.startswith(APP_DIR + "/"), f"{image_path}: not an absolute path in {APP_DIR}"
    return ROOT / image_path.removeprefix(APP_DIR + "/")


def _images(node) -> list[str]:
    """Every container image in a manifest, wherever its pod templates are."""
    if isinstance(node, list):
        return [image for item in node for image in _images(item)]
    if not isinstance(node, dict):
        return []
    found = [c["image"] for key in ("containers", "initContainers") for c in node.get(key, [])]
    return found + [image for value in node.values() for image in _images(value)]


def _copied(dockerfile: Path) -> set[str]:
    """The build-context paths that a Dockerfile's COPY lines read."""
    sources = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M):
        sources |= set([word for word in line.split() if not word.startswith("--")][:-1])
    return sources


def _tag(image: str) -> str:
    return image.rsplit("/", 1)[-1].partition(":")[2]


def test_every_yaml_in_the_repository_parses():
    files = _repo_yaml_files()
    assert any(p.parent.name == "configs" for p in files) and any(
        p.parent.name == "k8s" for p in files
    )
    for path in files:
        for doc in _docs(path):
            assert isinstance(doc, dict), f"{path}: top level must be a mapping"


def test_yaml_with_a_duplicate_key_is_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("spec:\n  replicas: 1\n  replicas: 2\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'replicas'"):
        _docs(path)


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cluster.yaml"])
def test_serve_configs_pass_rays_schema_and_build(name):
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    from serving.app import app_builder

    data = yaml.safe_load((INFRA / name).read_text())
    schema = ServeDeploySchema.model_validate(data)
    assert len(schema.applications) == 1
    app = schema.applications[0]
    ServeApplicationSchema.model_validate(data["applications"][0])
    assert app.import_path == "serving.app:app_builder"
    args = dict(app.args)
    if Path(args["config"]).is_absolute():  # a path in the image: build from the repository's copy
        args["config"] = str(_repo_path(args["config"]))
    assert (ROOT / args["config"]).is_file()
    # The builder accepts these args and binds both deployments (nothing is deployed here).
    built = app_builder(args)
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown keys"):
        app_builder({**args, "confg": "x"})


def test_local_serve_config_binds_loopback():
    data = yaml.safe_load((INFRA / "serve_config.yaml").read_text())
    assert data["http_options"]["host"] == "127.0.0.1"


def test_rayservice_embeds_the_cluster_serve_config():
    ((path, service),) = _of_kind("RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((INFRA / "serve_config.cluster.yaml").read_text()), path
    local = yaml.safe_load((INFRA / "serve_config.yaml").read_text())["applications"][0]
    cluster = embedded["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert local[key] == cluster[key]


def _pod_specs(doc: dict) -> list[dict]:
    """Every pod template spec of a RayCluster / RayJob / RayService."""
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [group["template"]["spec"] for group in groups]


def _cluster_spec(doc: dict) -> dict | None:
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        return spec
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig")


def test_kuberay_manifests_carry_required_fields_and_the_pinned_ray():
    kinds = {doc["kind"] for _, doc in _manifests()}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds
    for path, doc in _manifests():
        if doc["kind"] not in ("RayCluster", "RayJob", "RayService"):
            continue
        assert doc["apiVersion"] == "ray.io/v1", path
        assert doc["metadata"]["name"], path
        cluster = _cluster_spec(doc)
        if doc["kind"] == "RayJob":
            assert doc["spec"]["entrypoint"].startswith("python -m jobs."), path
            assert cluster is not None or doc["spec"].get("clusterSelector"), path
        if doc["kind"] == "RayService":
            assert doc["spec"]["serveConfigV2"], path
        if cluster is None:
            continue
        assert cluster["rayVersion"] == RAY_VERSION, path
        assert "rayStartParams" in cluster["headGroupSpec"], path
        for group in cluster.get("workerGroupSpecs", []):
            assert group["groupName"] and "rayStartParams" in group, path
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path
        for pod in _pod_specs(doc):
            for container in pod["containers"]:
                assert container["name"] and container["image"], path
                assert f"ray{RAY_VERSION}" in _tag(container["image"]), (
                    f"{path}: {container['image']}"
                )


def test_raycluster_has_head_cpu_and_gpu_workers():
    ((path, cluster),) = _of_kind("RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}, path
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] >= 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu


def test_rayjobs_run_the_jobs_commands():
    from animatediff.config import load_config

    entrypoints = {
        doc["metadata"]["name"]: doc["spec"]["entrypoint"] for _, doc in _of_kind("RayJob")
    }
    modules = {re.match(r"python -m jobs\.(\w+)", e).group(1) for e in entrypoints.values()}
    assert {"preprocess", "train"} <= modules
    for module in modules:
        assert (ROOT / "jobs" / f"{module}.py").is_file(), module
    for entrypoint in entrypoints.values():
        preset = _repo_path(re.search(r"--config (\S+)", entrypoint).group(1))
        assert preset.is_file(), preset
        # Every override names a real option of the config (the job would fail at start-up).
        overrides = [t for t in entrypoint.split() if "=" in t]
        load_config(preset, overrides)


def test_cluster_presets_are_absolute_paths_that_the_image_holds():
    # A relative path would depend on the working directory a job driver or a Serve replica starts
    # in; an absolute one under the image's WORKDIR does not.
    paths = [
        re.search(r"--config (\S+)", d["spec"]["entrypoint"]).group(1)
        for _, d in _of_kind("RayJob")
    ]
    cluster_serve = yaml.safe_load((INFRA / "serve_config.cluster.yaml").read_text())
    paths += [app["args"]["config"] for app in cluster_serve["applications"]]
    copied = _copied(INFRA / "Dockerfile")
    for path in paths:
        file = _repo_path(path)
        assert file.is_file(), path
        assert file.relative_to(ROOT).parts[0] in copied, f"{path}: not copied into the image"


def test_k8s_workloads_carry_the_fields_their_kinds_require():
    required = {
        "Deployment": ("selector", "template"),
        "StatefulSet": ("selector", "template", "serviceName"),
        "Service": ("ports",),
    }
    seen = set()
    for path, doc in _manifests():
        kind = doc["kind"]
        if kind not in required:
            continue
        seen.add(kind)
        assert doc["apiVersion"] in ("v1", "apps/v1"), path
        assert doc["metadata"]["name"], path
        for key in required[kind]:
            assert key in doc["spec"], f"{path}: {kind} needs spec.{key}"
        if kind in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), path
            assert all(
                c["name"] and c["image"] for c in doc["spec"]["template"]["spec"]["containers"]
            )
    assert seen == set(required)


def test_mlflow_server_uses_postgres_and_s3():
    deployments = {doc["metadata"]["name"]: doc for _, doc in _of_kind("Deployment")}
    container = deployments["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "--backend-store-uri" in command and "postgresql://" in command
    assert "--artifacts-destination s3://" in command
    statefulsets = {doc["metadata"]["name"]: doc for _, doc in _of_kind("StatefulSet")}
    image = statefulsets["mlflow-postgres"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("docker.io/library/postgres:")
    mlflow_dockerfile = (INFRA / "mlflow.Dockerfile").read_text()
    assert f"mlflow:v{_pin('mlflow')}" in mlflow_dockerfile
    assert f"{REGISTRY_VAR}/animatediff-mlflow:{_pin('mlflow')}" == container["image"]


def test_dockerfile_is_on_the_official_ray_image_of_the_pinned_version():
    text = (INFRA / "Dockerfile").read_text()
    default = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert default == f"rayproject/ray:{RAY_VERSION}-py311"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert f"ray.__version__ == '{RAY_VERSION}'" in text
    # Every image tag mentioned in the guide and Dockerfile comments carries the same version.
    for tag in re.findall(r"rayproject/ray:(\S+?)-py311", text + (INFRA / "README.md").read_text()):
        assert tag == RAY_VERSION


def test_the_image_holds_every_package_the_project_installs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in patterns}
    assert packages <= _copied(INFRA / "Dockerfile")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_each_image_build_sends_only_what_it_copies(dockerfile):
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile; an allowlist ("*" first, then
    # "!" for each COPY source) keeps .venv, .git and outputs out of the context.
    ignore = (INFRA / f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert {rule[1:] for rule in rules if rule.startswith("!")} == _copied(INFRA / dockerfile)


def test_the_paper_preset_loads_the_maintained_sd15_mirror():
    # runwayml/stable-diffusion-v1-5 was removed from the Hugging Face Hub in 2024.
    preset = yaml.safe_load((ROOT / "configs/sd15_webvid.yaml").read_text())
    assert preset["model"]["base"]["pretrained"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


# --- Images -----------------------------------------------------------------------------------

_DOMAIN = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# An image reference as docker/distribution's grammar has it: domain/path:tag.
IMAGE_REFERENCE = re.compile(rf"{_DOMAIN}/{_COMPONENT}(?:/{_COMPONENT})*:\w[\w.-]{{0,127}}")


def test_every_image_carries_the_configured_registry():
    images = [image for _, doc in _manifests() for image in _images(doc)]
    ours = [image for image in images if image.rsplit("/", 1)[-1].split(":")[0] in OUR_IMAGES]
    assert len(ours) == 8
    for image in ours:
        assert image.startswith(REGISTRY_VAR + "/"), image
    # Anything else names its registry too: CRI-O refuses ambiguous short names by default.
    for image in set(images) - set(ours):
        assert "." in image.split("/")[0], image
    for image in {image for _, doc in _manifests(SAMPLE_REGISTRY) for image in _images(doc)}:
        assert IMAGE_REFERENCE.fullmatch(image), image
    # The build commands in the guide and the Dockerfiles produce exactly the images applied.
    docs = "".join(
        (INFRA / name).read_text() for name in ("README.md", "Dockerfile", "mlflow.Dockerfile")
    )
    built = set(re.findall(r'-t "\$IMAGE_REGISTRY/(\S+?)"', docs))
    assert built == {image.removeprefix(REGISTRY_VAR + "/") for image in ours}


# --- Service names ----------------------------------------------------------------------------

# KubeRay's generated suffixes: k8s.io/apimachinery's rand.String(5), which draws from these.
RAND5 = "[bcdfghjklmnpqrstvwxz2456789]{5}"


def _services(doc: dict) -> list[str | re.Pattern]:
    """The Services an object gets, as names or name patterns, after KubeRay v1.7.0's
    utils.GenerateHeadServiceName / GenerateServeServiceName / GenerateRayClusterName."""
    name, kind = doc["metadata"]["name"], doc["kind"]
    if kind == "Service":
        return [name]
    if kind == "RayCluster":
        head = doc["spec"]["headGroupSpec"].get("headService", {}).get("metadata", {})
        names = [head.get("name") or f"{name}-head-svc"]
        if doc["metadata"].get("annotations", {}).get("ray.io/enable-serve-service") == "true":
            names.append(f"{name}-serve-svc")
        return names
    generated = [re.compile(rf"{re.escape(name)}-{RAND5}-{s}-svc") for s in ("head", "serve")]
    if kind == "RayJob":
        # Its own head Service and its cluster's (<name>-<5 random>); none on a selected cluster.
        return [f"{name}-head-svc", generated[0]] if "rayClusterSpec" in doc["spec"] else []
    if kind == "RayService":
        # Its own two, pointed at the active cluster, and each cluster's (a serve one too during
        # an incremental upgrade).
        return [f"{name}-head-svc", f"{name}-serve-svc", *generated]
    return []


def _can_clash(a: str | re.Pattern, b: str | re.Pattern) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        pattern, name = (a, b) if isinstance(a, re.Pattern) else (b, a)
        return pattern.fullmatch(name) is not None
    # Both are <owner>-<5 random>-<suffix>: equal lengths force equal owners and suffixes.
    return a.pattern == b.pattern


def _service_clashes(docs: list[dict]) -> list[str]:
    owned = [(f"{d['kind']}/{d['metadata']['name']}", s) for d in docs for s in _services(d)]
    return [
        f"{owner_a} and {owner_b}: {getattr(a, 'pattern', a)}"
        for i, (owner_a, a) in enumerate(owned)
        for owner_b, b in owned[i + 1 :]
        if _can_clash(a, b)
    ]


def test_no_two_objects_produce_the_same_service_name():
    docs = [doc for _, doc in _manifests()]
    assert _service_clashes(docs) == []
    # The check sees the clash this layout once had: a RayService named like the RayCluster.
    ((_, service),) = _of_kind("RayService")
    ((_, cluster),) = _of_kind("RayCluster")
    renamed = copy.deepcopy(service)
    renamed["metadata"]["name"] = cluster["metadata"]["name"]
    assert _service_clashes([cluster, renamed]) == [
        "RayCluster/animatediff and RayService/animatediff: animatediff-head-svc"
    ]


def test_the_preprocess_job_targets_the_long_lived_cluster():
    clusters = {doc["metadata"]["name"] for _, doc in _of_kind("RayCluster")}
    selectors = [
        d["spec"]["clusterSelector"]
        for _, d in _of_kind("RayJob")
        if "clusterSelector" in d["spec"]
    ]
    assert selectors and all(s["ray.io/cluster"] in clusters for s in selectors)


# --- Serve readiness and start-up -------------------------------------------------------------


def test_rayservice_workers_can_become_ready():
    ((path, service),) = _of_kind("RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    # KubeRay's readiness probe on RayService workers asks the local Serve proxy
    # (ray-operator/controllers/ray/common/pod.go); HeadOnly and Disabled start none on workers,
    # so they would never be Ready (kuberay#4994).
    assert serve.get("proxy_location", "EveryNode") == "EveryNode", path
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        # Keep KubeRay's probe: a raylet-only one would mark workers Ready that the serve
        # Service then sends requests to, whether or not a proxy answers there.
        assert "readinessProbe" not in container, path
        # The probe asks the container port named "serve", else 8000 (utils.FindContainerPort).
        ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
        assert ports.get("serve", 8000) == serve["http_options"]["port"], path


def _go_duration_seconds(value: str) -> float:
    """ray.io/initializing-timeout as KubeRay v1.7 reads it: a Go duration or integer seconds."""
    if value.isdigit():
        return int(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    assert re.fullmatch(r"(\d+(\.\d+)?(h|ms|m|s))+", value), value
    return sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(h|ms|m|s)", value))


# Fields KubeRay v1.7.0 still accepts but no longer reads, marked "Deprecated:" in
# ray-operator/apis/ray/v1/rayservice_types.go and rayjob_types.go (the CRD cannot say so).
DEPRECATED = {
    "RayService": ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"),
    "RayJob": ("deletionStrategy.onSuccess", "deletionStrategy.onFailure"),
}


def _has(spec: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(spec, dict) or key not in spec:
            return False
        spec = spec[key]
    return True


def test_kuberay_objects_pass_the_operators_own_checks():
    # A subset of ray-operator/controllers/ray/utils/validation.go (v1.7.0) that these objects reach.
    max_name = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
    for path, doc in _manifests():
        kind = doc["kind"]
        if kind not in KUBERAY_KINDS:
            continue
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), f"{path}: not a DNS-1035 label"
        assert len(name) <= max_name[kind], path
        for field in DEPRECATED.get(kind, ()):
            assert not _has(doc["spec"], field), f"{path}: spec.{field} is deprecated and unused"
        if kind == "RayJob" and "clusterSelector" in doc["spec"]:
            assert doc["spec"].get("backoffLimit", 0) == 0, f"{path}: no retries with a selector"
        if kind == "RayService":
            timeout = doc["metadata"].get("annotations", {}).get("ray.io/initializing-timeout")
            assert timeout, f"{path}: the cold start needs ray.io/initializing-timeout"
            assert _go_duration_seconds(timeout) >= 15 * 60, f"{path}: {timeout} is too short"


# --- Schemas ----------------------------------------------------------------------------------


def _closed(schema):
    """A CRD schema as kubectl --validate=strict applies it: unknown fields are errors (the API
    server would otherwise drop them silently), except where the schema allows any key."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {key: _closed(value) for key, value in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _closed(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_closed(sub) for sub in out[key]]
    return out


@functools.cache
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(_closed(KUBERAY["schemas"][kind]))


def _crd_errors(doc: dict) -> list[str]:
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in _crd_validator(doc["kind"]).iter_errors(doc)
    ]
    # The CRD leaves metadata to the API server, which checks it as ObjectMeta (strictly too).
    try:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
            K8S_VERSIONS[-1],
            strict=True,
        )
    except kubernetes_validate.ValidationError as error:
        errors.append(f"{'.'.join(map(str, error.absolute_path))}: {error.message}")
    return errors


def test_the_crd_schemas_are_kuberays_v1_at_a_pinned_release():
    source = KUBERAY["source"]
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert source["tag"] == "v1.7.0" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["version"] == "v1" and set(source["files"]) == set(KUBERAY["schemas"])
    assert set(KUBERAY["schemas"]) == set(KUBERAY_KINDS)


def test_kuberay_objects_match_the_v1_crd_schema_strictly():
    objects = [doc for _, doc in _manifests(SAMPLE_REGISTRY) if doc["kind"] in KUBERAY_KINDS]
    assert {doc["kind"] for doc in objects} == set(KUBERAY_KINDS)
    for doc in objects:
        assert doc["apiVersion"] == f"ray.io/{KUBERAY['source']['version']}"
        assert _crd_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def _planted(doc: dict, dotted: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = [int(key) if key.isdigit() else key for key in dotted.split(".")]
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "spec.rayVersions",
            "2.60.0",
            "spec: Additional properties are not allowed ('rayVersions'",
        ),
        (
            "spec.headGroupSpec.template.spec.containers.0.imagePullPolcy",
            "Always",
            "spec.headGroupSpec.template.spec.containers.0: Additional properties are not allowed",
        ),
        (
            "spec.workerGroupSpecs.0.replicas",
            "two",
            "spec.workerGroupSpecs.0.replicas: 'two' is not",
        ),
        ("metadata.labelz", {}, "metadata: Additional properties are not allowed ('labelz'"),
    ],
)
def test_the_crd_schema_check_rejects_a_planted_wrong_field(field, value, expected):
    ((_, cluster),) = _of_kind("RayCluster")
    errors = _crd_errors(_planted(cluster, field, value))
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def _core_objects(registry: str) -> list[dict]:
    return [doc for _, doc in _manifests(registry) if doc["apiVersion"] in ("v1", "apps/v1")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_pass_kubernetes_validate_strictly(version):
    objects = _core_objects(SAMPLE_REGISTRY)
    assert {doc["kind"] for doc in objects} == {"Service", "StatefulSet", "Deployment"}
    for doc in objects:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_rejects_a_planted_wrong_field():
    (deployment,) = [doc for doc in _core_objects(SAMPLE_REGISTRY) if doc["kind"] == "Deployment"]
    planted = _planted(deployment, "spec.template.spec.containers.0.imagePullPolcy", "Always")
    with pytest.raises(
        kubernetes_validate.ValidationError, match="'imagePullPolcy' was unexpected"
    ):
        kubernetes_validate.validate(planted, K8S_VERSIONS[-1], strict=True)
