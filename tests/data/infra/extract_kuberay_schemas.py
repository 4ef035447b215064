"""Regenerate kuberay-crd-schemas.json from a clone of ray-project/kuberay:

    git clone https://github.com/ray-project/kuberay /tmp/kuberay
    python tests/data/infra/extract_kuberay_schemas.py /tmp/kuberay v1.7.0

Reads the CRDs at the tag (not the working tree), keeps each kind's v1 `openAPIV3Schema` as is,
and records where it came from: the tag, its commit and each file's git blob id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
    "RayService": "ray-operator/config/crd/bases/ray.io_rayservices.yaml",
}
OUT = Path(__file__).with_name("kuberay-crd-schemas.json")


def _git(repo: str, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, *args], capture_output=True, text=True, check=True
    ).stdout


def main(repo: str, tag: str) -> None:
    schemas, blobs = {}, {}
    for kind, path in CRDS.items():
        crd = yaml.safe_load(_git(repo, "show", f"{tag}:{path}"))
        assert crd["spec"]["names"]["kind"] == kind, path
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = v1["schema"]["openAPIV3Schema"]
        blobs[kind] = _git(repo, "rev-parse", f"{tag}:{path}").strip()
    source = {
        "repository": "https://github.com/ray-project/kuberay",
        "tag": tag,
        "commit": _git(repo, "rev-parse", f"{tag}^{{commit}}").strip(),
        "files": {kind: {"path": CRDS[kind], "blob": blobs[kind]} for kind in CRDS},
        "version": "v1",
    }
    # Compact: ~530 kB instead of ~1.5 MB indented; it is data, regenerated, never edited.
    text = json.dumps({"source": source, "schemas": schemas}, separators=(",", ":"))
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
