"""nsmagic export --kubernetes: a Job and a Pod with the same image, command and limits,
valid for the Kubernetes API (the official client's models read every field of them), and
the Pod runs under podman kube play with the same output as nsmagic run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from nsmagic import images
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.kubernetes import manifests, quantity_of_bytes, quantity_of_cpus
from tests.conftest import IS_ROOT

from . import builders
from .conftest import tool
from .test_interop import podman, podman_dir  # noqa: F401 - a fixture

kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client (test extra)")

COMMAND = ["sh", "-c", "echo from the pod; cat /etc/hello"]


def export(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsmagic", "export", *options],
                          capture_output=True, text=True, timeout=60)


def as_model(document: dict):
    """The document read by the client's model of its kind; its fields written back."""
    client = kubernetes.client.ApiClient()
    kind = {"Pod": "V1Pod", "Job": "V1Job"}[document["kind"]]
    model = client.deserialize(json.dumps(document), kind, "application/json")
    return model, client.sanitize_for_serialization(model)


def documents(text: str) -> list[dict]:
    return list(yaml.safe_load_all(text))


def test_the_job_and_the_pod_are_what_the_kubernetes_api_reads_field_for_field(tmp_path):
    path = tmp_path / "manifests.yaml"
    made = export("--kubernetes", str(path), "--image", "127.0.0.1:5000/test/kube:1",
                  "--name", "Lab_Run", "--memory", "64M", "--cpus", "0.5", "--pids", "64",
                  "--env", "MODE=test", "--hostname", "lab1", "--user", "1000:100",
                  "--read-only", "--", *COMMAND)
    assert made.returncode == 0, made.stderr
    job, pod = documents(path.read_text())
    for document in (job, pod):
        model, written = as_model(document)
        assert written == document  # no field the API does not know, none lost
    assert job["spec"]["template"]["spec"] == pod["spec"]
    container = pod["spec"]["containers"][0]
    assert container["name"] == pod["metadata"]["name"] == "lab-run"
    assert container["image"] == "127.0.0.1:5000/test/kube:1"
    assert container["args"] == COMMAND  # the image's Entrypoint stays, as with docker run
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "64Mi"}}
    assert container["env"] == [{"name": "MODE", "value": "test"}]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True, "runAsUser": 1000, "runAsGroup": 100}
    assert pod["spec"]["hostname"] == "lab1" and pod["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0


def test_the_check_catches_a_field_the_api_does_not_have_and_a_missing_one():
    pod = manifests("busybox:1").pod
    pod["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # a typo
    assert as_model(pod)[1] != pod
    del pod["spec"]["containers"]
    with pytest.raises(ValueError, match="containers"):  # pydantic's ValidationError
        as_model(pod)


def test_a_limit_without_a_kubernetes_form_is_a_comment_where_the_limits_are():
    text = manifests("busybox:1", limits=Limits.parse(memory="1G", memory_swap="2G",
                                                      pids=64, cpuset="0")).yaml()
    lines = text.splitlines()
    resources = [i for i, line in enumerate(lines) if line.strip() == "resources:"]
    assert len(resources) == 2  # the Job's and the Pod's
    for index in resources:
        comments = [line.strip() for line in lines[index - 4:index]]
        assert [c.split(":")[0] for c in comments] == ["# --pids 64", "# --memory-swap 2147483648",
                                                       "# --cpuset 0", "# --net none"]
    assert "podPidsLimit" in text
    assert documents(text)[1]["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "1Gi"}}


def test_options_with_a_kubernetes_field_become_that_field():
    pod = manifests("busybox:1", net="host", privileged=True, seccomp=False, userns=True,
                    namespaces={"uts", "mount"}).pod
    assert pod["spec"]["hostNetwork"] and pod["spec"]["hostPID"] and pod["spec"]["hostIPC"]
    assert pod["spec"]["hostUsers"] is False
    assert pod["spec"]["containers"][0]["securityContext"] == {"privileged": True}
    assert "args" not in pod["spec"]["containers"][0]  # the image's own Cmd
    assert as_model(pod)[1] == pod


@pytest.mark.parametrize("cpus, quantity", [(0.5, "500m"), (2, "2"), (0.0004, "1m"),
                                            (1.25, "1250m")])
def test_cpus_are_millicores(cpus, quantity):
    assert quantity_of_cpus(cpus) == quantity


@pytest.mark.parametrize("size, quantity", [(64 << 20, "64Mi"), (1 << 30, "1Gi"),
                                            (1000, "1000"), (1536, "1536"), (3 << 10, "3Ki")])
def test_memory_is_bytes_with_a_binary_suffix_where_exact(size, quantity):
    assert quantity_of_bytes(size) == quantity


def test_an_image_no_cluster_can_pull_is_one_sentence():
    with pytest.raises(SpecError, match="pulls images from a registry"):
        manifests("oci:/tmp/layout:1")
    refused = export("--kubernetes", "-", "--", "true")
    assert refused.returncode == 2 and "give --image REF" in refused.stderr
    both = export("--kubernetes", "-", "--oci", "/tmp/x", "--image", "busybox")
    assert both.returncode == 2 and "one of them" in both.stderr


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="podman runs rootful here")
@tool("podman")
@tool("catatonit")  # podman builds its pause image from it, with no registry
def test_podman_kube_play_runs_the_pod_from_the_local_registry_as_nsmagic_runs_it(
        registry, podman_dir, tmp_path, monkeypatch):  # noqa: F811
    layout = str(tmp_path / "busybox")
    builders.write_layout(layout, "1", [builders.busybox_layer()], env=["PATH=/bin"])
    name = f"{registry.host}/test/kube:1"
    images.pull(f"oci:{layout}:1")
    images.push(f"oci:{layout}:1", name)
    ours = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--image", name,
                           "--memory", "64M", "--cpus", "0.5", "--", *COMMAND],
                          capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    path = tmp_path / "manifests.yaml"
    made = export("--kubernetes", str(path), "--image", name, "--name", "demo", "--memory",
                  "64M", "--cpus", "0.5", "--", *COMMAND)
    assert made.returncode == 0, made.stderr
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(path.read_text().split("---\n")[1])  # podman plays Pods, not Jobs
    conf = tmp_path / "containers.conf"  # podman's default limits are above this host's
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", '
                    '"nproc=4096:4096"]\n')
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    played = podman(podman_dir, "kube", "play", "--tls-verify=false", "--network", "none",
                    str(pod_file))
    try:
        assert played.returncode == 0, played.stderr
        waited = podman(podman_dir, "wait", "demo-demo")
        assert waited.stdout.strip() == "0", waited.stderr
        logs = podman(podman_dir, "logs", "demo-demo")
        assert logs.stdout == ours.stdout == "from the pod\nhello from busybox\n"
        limits = podman(podman_dir, "inspect", "demo-demo", "--format",
                        "{{.HostConfig.Memory}} {{.HostConfig.CpuQuota}}")
        assert limits.stdout.split() == [str(64 << 20), "50000"]
    finally:
        podman(podman_dir, "kube", "down", str(pod_file))
