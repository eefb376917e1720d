"""The configurations in infra/ are valid for the tools that read them and agree with each other
and with infra/README.md (the image, the entrypoint, the shared volume, the Ray version), and none
runs an MLflow server or a Ray dashboard that answers without credentials."""

from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import tomllib
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
README = (INFRA / "README.md").read_text()
SHARED_MOUNT = "/mnt/dpsweep"


def _cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def _ray_cluster_specs() -> dict[str, dict[str, Any]]:
    """The RayCluster spec of raycluster.yaml and the one inside rayjob.yaml, by kind."""
    specs = {}
    for doc in _manifests():
        if doc["kind"] == "RayCluster":
            specs["RayCluster"] = doc["spec"]
        elif doc["kind"] == "RayJob":
            specs["RayJob"] = doc["spec"]["rayClusterSpec"]
    return specs


def _pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def _documented_image() -> str:
    found = re.findall(r"docker build -f infra/docker/Dockerfile -t (\S+) \.", README)
    assert len(set(found)) == 1, f"infra/README.md should document one `docker build` of the image, found {found}"
    return found[0]


def _ray_schema() -> dict[str, Any]:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# ---- the Ray cluster launcher config ------------------------------------------------------------


def test_cluster_yaml_validates_against_rays_own_schema() -> None:
    config = _cluster_yaml()
    jsonschema.validate(config, _ray_schema())  # as written
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` checks it, defaults merged


def test_the_schema_check_catches_a_misspelled_key() -> None:
    broken = _cluster_yaml()
    broken["available_node_types"]["gpu_worker"]["min_worker"] = broken["available_node_types"]["gpu_worker"].pop(
        "min_workers"
    )
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_nodes_install_the_project_from_pyproject_and_share_the_results_volume() -> None:
    config = _cluster_yaml()
    # The project root is synced to every node, then installed from its pyproject.toml.
    assert config["file_mounts"]["~/dpsweep"] == "."
    assert any(re.fullmatch(r"pip install( --quiet)? -e ~/dpsweep", c) for c in config["setup_commands"])
    assert not config["head_setup_commands"] and not config["worker_setup_commands"]
    # The shared volume is mounted on the host and handed to the container at the same path.
    assert any(SHARED_MOUNT in c and "mount" in c for c in config["initialization_commands"])
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in config["docker"]["run_options"]
    # GPU workers, and no trials on the head.
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in commands)


# ---- the Kubernetes manifests --------------------------------------------------------------------


def test_manifests_parse_and_have_the_kinds_the_readme_describes() -> None:
    kinds = sorted(doc["kind"] for doc in _manifests())
    assert kinds == sorted(
        [
            "RayCluster",
            "RayJob",
            "PersistentVolumeClaim",
            "Service",
            "Service",
            "StatefulSet",
            "ConfigMap",
            "Deployment",
        ]
    )
    for doc in _manifests():
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"


def test_every_ray_pod_runs_the_image_the_readme_builds() -> None:
    image = _documented_image()
    for kind, spec in _ray_cluster_specs().items():
        for pod in _pod_templates(spec):
            assert [c["image"] for c in pod["containers"]] == [image], kind
    assert f"docker push {image}" in README


def test_rayjob_entrypoint_is_the_documented_one_and_a_valid_launch_command() -> None:
    from sweeps.launch import build_parser
    from sweeps.space import load_space

    job = next(doc for doc in _manifests() if doc["kind"] == "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    assert f"\n{entrypoint}\n" in README, "infra/README.md should show the RayJob's entrypoint on a line of its own"
    words = shlex.split(entrypoint)
    assert words[:3] == ["python", "-m", "sweeps.launch"]
    args = build_parser().parse_args(words[3:])
    load_space(args.space)  # a shipped space
    assert str(args.results_dir).startswith(SHARED_MOUNT + "/")
    # The tracking URI names the MLflow Service of mlflow.yaml, on its port.
    service = next(d for d in _manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert args.tracking_uri == f"http://mlflow:{service['spec']['ports'][0]['port']}"


def test_ray_pods_share_one_read_write_many_volume_and_workers_get_gpus() -> None:
    claim = next(doc for doc in _manifests() if doc["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind, spec in _ray_cluster_specs().items():
        assert spec["authOptions"] == {"mode": "token"}, kind
        for pod in _pod_templates(spec):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for mount in pod["containers"][0]["volumeMounts"]:
                assert mount["mountPath"] == SHARED_MOUNT
                assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", kind
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, kind


def test_mlflow_on_kubernetes_uses_postgres_and_the_shared_volume() -> None:
    deployment = next(d for d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--backend-store-uri"].startswith("postgresql+psycopg://")
    assert options["--artifacts-destination"].startswith(SHARED_MOUNT + "/")
    postgres = next(d for d in _manifests() if d["kind"] == "StatefulSet")
    assert "@" + postgres["metadata"]["name"] + ":5432/" in options["--backend-store-uri"]


def _auth_ini(text: str, *, postgres_host: str) -> None:
    """MLflow's auth settings: signed-in users read, the user store in PostgreSQL, no account in the file."""
    ini = configparser.ConfigParser()
    ini.read_string(text)
    assert ini["mlflow"]["default_permission"] == "READ"
    assert ini["mlflow"]["database_uri"] == f"postgresql+psycopg://mlflow@{postgres_host}:5432/mlflow_auth"
    assert "admin_password" not in ini["mlflow"] and "admin_username" not in ini["mlflow"]


def _from_secret(env: list[dict[str, Any]], name: str) -> str:
    """The Secret an environment variable of a pod comes from; fails if it is written in the manifest."""
    entry = next(e for e in env if e["name"] == name)
    assert "value" not in entry, f"{name} is written in the manifest"
    return entry["valueFrom"]["secretKeyRef"]["name"]


def test_mlflow_on_kubernetes_requires_an_account_whose_admin_comes_from_a_secret() -> None:
    deployment = next(d for d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["--app-name", "basic-auth"]
    for name in (
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PGPASSWORD",
    ):
        _from_secret(container["env"], name)
    config_path = next(e["value"] for e in container["env"] if e["name"] == "MLFLOW_AUTH_CONFIG_PATH")
    config_map = next(d for d in _manifests() if d["kind"] == "ConfigMap")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(Path(config_path).parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    _auth_ini(config_map["data"][Path(config_path).name], postgres_host="mlflow-postgres")
    assert "createdb -h mlflow-postgres -U mlflow mlflow_auth" in pod["initContainers"][0]["args"][0]


# ---- images and the MLflow server definitions ------------------------------------------------------


def test_one_ray_release_everywhere_and_within_the_projects_range() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.MULTILINE).group(1)
    assert base == _cluster_yaml()["docker"]["image"]
    version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", base).group(1)
    assert {spec["rayVersion"] for spec in _ray_cluster_specs().values()} == {version}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_requirement = next(Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("ray"))
    assert ray_requirement.specifier.contains(version), (ray_requirement, version)


def test_dockerfile_installs_the_project_from_pyproject() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^COPY .*pyproject\.toml", dockerfile, re.MULTILINE)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY .*\b{package}\b", dockerfile, re.MULTILINE), f"the image lacks package {package}"
    assert re.search(r"^RUN pip install --no-cache-dir \. ", dockerfile, re.MULTILINE)


def test_compose_runs_mlflow_on_postgres_with_an_s3_compatible_artifact_store() -> None:
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    command = services["mlflow"]["command"]
    options = dict(zip(command[::2], command[1::2], strict=True))
    backend = options["--backend-store-uri"]
    assert backend.startswith("postgresql+psycopg://") and "@postgres:5432/" in backend
    assert options["--artifacts-destination"].startswith("s3://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    server_image = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert "psycopg" in server_image and "boto3" in server_image and "mlflow[auth]" in server_image


def test_compose_requires_an_account_whose_admin_comes_from_the_environment() -> None:
    services = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())["services"]
    mlflow = services["mlflow"]
    assert mlflow["command"][:2] == ["--app-name", "basic-auth"]
    environment = mlflow["environment"]
    # Required from the environment (compose stops with the message), never a default in the file.
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]*\}}", environment[name]), environment[name]
    assert environment["PGPASSWORD"].startswith("${MLFLOW_DB_PASSWORD:?")
    mounted = dict(v.split(":")[:2][::-1] for v in mlflow["volumes"])
    ini_file = INFRA / "mlflow" / Path(mounted[environment["MLFLOW_AUTH_CONFIG_PATH"]]).name
    _auth_ini(ini_file.read_text(), postgres_host="postgres")
    assert mlflow["depends_on"]["create-auth-db"] == {"condition": "service_completed_successfully"}
    assert "createdb -h postgres -U mlflow mlflow_auth" in services["create-auth-db"]["command"][0]


def test_ray_heads_get_their_mlflow_account_from_a_secret_and_jobs_carry_none() -> None:
    for kind, spec in _ray_cluster_specs().items():
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {
            _from_secret(head["env"], "MLFLOW_TRACKING_USERNAME"),
            _from_secret(head["env"], "MLFLOW_TRACKING_PASSWORD"),
        } == {"dpsweep-mlflow-account"}, kind
        for group in spec["workerGroupSpecs"]:  # trials never talk to MLflow
            assert not group["template"]["spec"]["containers"][0].get("env"), kind
    job = next(doc for doc in _manifests() if doc["kind"] == "RayJob")
    assert "MLFLOW_TRACKING" not in json.dumps(job["spec"].get("runtimeEnvYAML", ""))
    # The cluster launcher copies MLflow's own credentials file; nothing in the config holds one.
    config = _cluster_yaml()
    assert config["file_mounts"]["~/.mlflow/credentials"] == "~/.mlflow/credentials"
    assert "MLFLOW_TRACKING_PASSWORD" not in (INFRA / "ray" / "cluster-aws.yaml").read_text()


def _shell_blocks(markdown: str) -> list[str]:
    """Fenced code blocks, and the paragraphs outside them (which hold the indented ones)."""
    fenced = re.findall(r"```(?:bash)?\n(.*?)```", markdown, re.DOTALL)
    outside = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return fenced + re.split(r"\n\s*\n", outside)


def test_no_config_serves_the_ray_dashboard_beyond_loopback_without_token_auth() -> None:
    """The dashboard carries the Job API, which runs anyone's code: off loopback, only with tokens."""
    loopback = {"127.0.0.1", "localhost"}
    head_commands = [c for c in _cluster_yaml()["head_start_ray_commands"] if "ray start" in c]
    for readme in (README, (ROOT / "README.md").read_text()):
        head_commands += [block for block in _shell_blocks(readme) if re.search(r"ray start\b.*--head", block)]
    assert head_commands
    for command in head_commands:
        hosts = re.findall(r"--dashboard-host[= ](\S+)", command) or ["127.0.0.1"]  # Ray's default: loopback
        assert set(hosts) <= loopback or "RAY_AUTH_MODE=token" in command, command
    for kind, spec in _ray_cluster_specs().items():
        if spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "127.0.0.1") not in loopback:
            assert spec["authOptions"] == {"mode": "token"}, kind


# ---- the local start script --------------------------------------------------------------------


def test_start_local_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(INFRA / "mlflow" / "start_local.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_start_local_says_how_to_install_postgresql_when_it_is_missing() -> None:
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            ["bash", str(INFRA / "mlflow" / "start_local.sh"), "start"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DPSWEEP_MLFLOW_HOME": home, "PG_BIN": "/nonexistent"},
        )
        assert done.returncode == 3 and "apt-get install -y postgresql" in done.stderr
        assert not any(Path(home).iterdir())  # nothing was created
