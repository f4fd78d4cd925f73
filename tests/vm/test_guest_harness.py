"""The cgroup v2 guest is a test harness of the checkout, not part of the installed package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nsmagic.vm
from tests.vm.guest import GUEST_ENV, guest_script, repo_root


def test_the_installed_package_does_not_ship_the_harness() -> None:
    assert importlib.util.find_spec("nsmagic.vm.guest") is None
    assert not {"run_in_v2_guest", "v2_guest_available", "repo_root"} & set(dir(nsmagic.vm))


def test_the_guest_script_sets_the_environment_then_the_folder_then_runs_the_command() -> None:
    script = guest_script(["echo", "a b"], env={"FOO": "bar baz"}, cwd="/some dir")
    lines = script.splitlines()
    assert lines[-2:] == ["cd '/some dir' || exit 126", "echo 'a b'"]
    assert "export FOO='bar baz'" in lines
    # The host root is read-only in the guest: no bytecode is written, HOME is its tmpfs.
    assert GUEST_ENV["PYTHONDONTWRITEBYTECODE"] == "1" and "export HOME=/tmp" in lines
    assert guest_script("cat /proc/self/cgroup; id").endswith("cat /proc/self/cgroup; id\n")


def test_vm_shell_finds_the_harness_from_any_folder(tmp_path) -> None:  # noqa: ANN001
    shell = repo_root() / "scripts" / "vm-shell"
    done = subprocess.run([sys.executable, str(shell), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "cgroup v2 guest" in done.stdout
