"""Kubernetes from its README alone (issue 23, item 7): walk deploy/kubernetes/README.md's steps as a
cluster would, and check that every Secret and ConfigMap the manifests refer to (with the key they read)
is created by those steps, or that the reference is optional. The manifests are validated by the real
``kubernetes-validate`` command too, as an operator would run it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
README = K8S_DIR / "README.md"
Named = tuple[str, str]  # (kind, name)


def readme_commands() -> list[list[str]]:
    """The commands of the README's ``sh`` blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL):
        text = re.sub(r"\\\n", " ", block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    yield from (doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)


def created_by_the_readme() -> dict[Named, set[str]]:
    """(kind, name) -> the keys it holds, for every object the README's kubectl commands create."""
    created: dict[Named, set[str]] = {}
    for words in readme_commands():
        if words[0] != "kubectl":
            continue
        if words[1:4] == ["create", "secret", "generic"] or words[1:3] == ["create", "configmap"]:
            kind = "Secret" if words[2] == "secret" else "ConfigMap"
            name = words[4] if kind == "Secret" else words[3]
            keys = {w.split("=", 2)[1] for w in words if w.startswith(("--from-file=", "--from-literal="))}
            created[(kind, name)] = keys
        elif words[1] == "apply":
            files = [words[i + 1] for i, w in enumerate(words) if w == "-f"]
            for file in files:
                for doc in _documents(K8S_DIR / file):
                    keys = {*doc.get("data", {}), *doc.get("stringData", {})}
                    created[(doc["kind"], doc["metadata"]["name"])] = keys
    return created


def referenced_by_the_manifests() -> list[tuple[Named, str, bool, str]]:
    """((kind, name), key, optional, where) for every Secret and ConfigMap a pod spec reads."""
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in _documents(path):
            spec = doc.get("spec", {}).get("template", {}).get("spec")
            if spec is None:
                continue
            where = f"{path.name} {doc['kind']}/{doc['metadata']['name']}"
            for volume in spec.get("volumes", []):
                for kind, ref, field in (("Secret", volume.get("secret"), "secretName"),
                                         ("ConfigMap", volume.get("configMap"), "name")):  # fmt: skip
                    if ref is not None:
                        for item in ref.get("items", [{"key": ""}]):
                            found.append(((kind, ref[field]), item["key"], bool(ref.get("optional")), where))
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                for env in container.get("env", []):
                    source = env.get("valueFrom", {})
                    for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                        ref = source.get(field)
                        if ref is not None:
                            found.append(((kind, ref["name"]), ref["key"], bool(ref.get("optional")), where))
                for env_from in container.get("envFrom", []):
                    for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                        ref = env_from.get(field)
                        if ref is not None:
                            found.append(((kind, ref["name"]), "", bool(ref.get("optional")), where))
    return found


def test_the_readme_creates_every_secret_and_config_map_the_pods_need():
    created = created_by_the_readme()
    references = referenced_by_the_manifests()
    assert references, "the manifests refer to no Secret or ConfigMap: the walk found nothing to check"
    missing = [
        f"{where}: {kind} {name!r} key {key!r}"
        for (kind, name), key, optional, where in references
        if not optional and ((kind, name) not in created or (key and key not in created[(kind, name)]))
    ]
    assert not missing, f"the README's steps leave pods unable to start: {missing}"
    # An optional reference the README still creates must get the key the pod reads.
    for (kind, name), key, _, where in references:
        if (kind, name) in created and key:
            assert key in created[(kind, name)], f"{where}: {kind} {name} is created without key {key!r}"


def test_the_readme_applies_no_placeholder_secret():
    """secret.yaml holds placeholders: the steps create the Secrets from outside git instead."""
    applied = [w for words in readme_commands() if words[:2] == ["kubectl", "apply"] for w in words]
    assert "secret.yaml" not in applied
    placeholders = {doc["metadata"]["name"] for doc in _documents(K8S_DIR / "secret.yaml")}
    created = {name for kind, name in created_by_the_readme() if kind == "Secret"}
    assert placeholders <= created | optional_secrets(), placeholders - created


def optional_secrets() -> set[str]:
    references = referenced_by_the_manifests()
    return {name for (kind, name), _, optional, _ in references if kind == "Secret" and optional}


def test_what_the_comments_say_of_a_missing_store_secret_is_what_the_manifest_does():
    """secret.yaml says that without the store Secret each sidecar keeps its own memory: that holds only
    if the reference is optional (else the pod cannot start) and nothing else sets SIDECAR_STORE."""
    assert "without this Secret the\n# variable is unset" in (K8S_DIR / "secret.yaml").read_text()
    assert "trengo-sidecar-store" in optional_secrets()
    deployment = next(_documents(K8S_DIR / "deployment.yaml"))
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "trengo-sidecar")
    assert "--store" not in sidecar.get("args", [])
    assert [e["name"] for e in sidecar.get("env", [])].count("SIDECAR_STORE") == 1


def test_a_reference_the_readme_does_not_create_is_caught():
    """The walk itself can fail: without the README's token step, the required reference is missing."""
    created = created_by_the_readme()
    created.pop(("Secret", "trengo-sidecar-token"))
    missing = [
        (kind, name) for (kind, name), _, optional, _ in referenced_by_the_manifests()
        if not optional and (kind, name) not in created
    ]  # fmt: skip
    assert missing == [("Secret", "trengo-sidecar-token")]


def test_every_manifest_passes_the_kubernetes_validate_command():
    files = sorted(str(p) for p in K8S_DIR.glob("*.yaml"))
    for version in ("1.29", kubernetes_validate.latest_version()):
        done = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        documents = sum(1 for f in files for _ in _documents(Path(f)))
        output = done.stdout + done.stderr
        assert output.count("passed for resource") == documents, output
