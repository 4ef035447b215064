"""Infrastructure files: every YAML parses, Serve configs pass Ray's own schema, KubeRay and k8s
manifests carry what their kinds require, and versions move in lockstep with pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SKIP_DIRS = {".venv", ".git", "outputs", "mlruns", "mlartifacts", "node_modules", ".pytest_cache"}


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


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted((INFRA / "k8s").glob("*.yaml")) for doc in _docs(path)]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in _manifests() if doc.get("kind") == kind]


def test_every_yaml_in_the_repository_parses():
    files = _repo_yaml_files()
    assert any(p.parent.name == "configs" for p in files) and any(
        p.parent.name == "k8s" for p in files
    )
    for path in files:
        for doc in _docs(path):
            assert isinstance(doc, dict), f"{path}: top level must be a mapping"


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
    assert (ROOT / app.args["config"]).is_file()
    # The builder accepts these args and binds both deployments (nothing is deployed here).
    built = app_builder(dict(app.args))
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown keys"):
        app_builder({**app.args, "confg": "x"})


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
                tag = container["image"].split(":", 1)[1]
                assert f"ray{RAY_VERSION}" in tag, f"{path}: {container['image']}"


def test_raycluster_has_head_cpu_and_gpu_workers():
    ((path, cluster),) = _of_kind("RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}, path
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] >= 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu


def test_rayjobs_run_the_jobs_commands():
    entrypoints = {
        doc["metadata"]["name"]: doc["spec"]["entrypoint"] for _, doc in _of_kind("RayJob")
    }
    modules = {re.match(r"python -m jobs\.(\w+)", e).group(1) for e in entrypoints.values()}
    assert {"preprocess", "train"} <= modules
    for module in modules:
        assert (ROOT / "jobs" / f"{module}.py").is_file(), module
    for entrypoint in entrypoints.values():
        preset = re.search(r"--config (\S+)", entrypoint).group(1)
        assert (ROOT / preset).is_file(), preset
        # Every override names a real option of the config (the job would fail at start-up).
        from animatediff.config import load_config

        overrides = [t for t in entrypoint.split() if "=" in t]
        load_config(ROOT / preset, overrides)


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
    assert image.startswith("postgres:")
    mlflow_dockerfile = (INFRA / "mlflow.Dockerfile").read_text()
    assert f"mlflow:v{_pin('mlflow')}" in mlflow_dockerfile
    assert f"animatediff-mlflow:{_pin('mlflow')}" == container["image"]


def test_dockerfile_is_on_the_official_ray_image_of_the_pinned_version():
    text = (INFRA / "Dockerfile").read_text()
    default = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert default == f"rayproject/ray:{RAY_VERSION}-py311"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert f"ray.__version__ == '{RAY_VERSION}'" in text
    # Every image tag mentioned in the guide and Dockerfile comments carries the same version.
    for tag in re.findall(r"rayproject/ray:(\S+?)-py311", text + (INFRA / "README.md").read_text()):
        assert tag == RAY_VERSION
