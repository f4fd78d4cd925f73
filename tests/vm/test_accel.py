"""One answer to "do VMs get KVM here?": in plain words, the same for the doctor and the VM
baseline, with qemu's own messages kept in a log and never in the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsmagic.host import _check_kvm, probe
from nsmagic.vm import accel
from nsmagic.vm.console import kvm_failure
from nsmagic.vm.launch import VMResult
from nsmagic.vm.qemu import kvm_works

ASSERTION = (
    "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
    "`ret == cpu->kvm_msr_buf->nmsrs' failed.\n"
)


@pytest.fixture
def fresh_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the verdict this process remembers, and remember none from the test."""
    monkeypatch.setattr(accel, "_verdict", None)


def host_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, device: bool, flags: set[str]):
    """A host whose /dev/kvm exists or not and whose CPU shows these flags."""
    path = tmp_path / "kvm"
    if device:
        path.write_text("")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(path))
    monkeypatch.setattr(accel, "_cpu_flags", lambda: flags)


def probe_boots(monkeypatch: pytest.MonkeyPatch, result: VMResult) -> list[str]:
    """Make the probe boot give `result`; returns the accelerators it was launched with."""
    launched: list[str] = []

    def fake_launch(image, *, accel: str, **_kwargs) -> VMResult:  # noqa: ANN001
        launched.append(accel)
        return result

    monkeypatch.setattr(accel, "launch", fake_launch)
    monkeypatch.setattr(accel, "build_image", lambda flavour: object())
    return launched


def kvm_result(console: str, returncode: int | None, ready: bool = False) -> VMResult:
    result = VMResult("micro", "kvm", "microvm", 128 * 2**20, 1, 0, 0, ready=ready)
    result.console, result.qemu_returncode = console, returncode
    return result


def test_the_doctor_says_the_verdict_word_for_word() -> None:
    verdict = accel.kvm_verdict()
    assert _check_kvm().reason == verdict.reason
    assert _check_kvm().ok == verdict.kvm
    # The doctor itself runs in a helper process: it reaches the same words there.
    assert probe().kvm.reason == verdict.reason
    assert f"KVM for the VM baseline: {verdict.reason}" in probe().describe()
    assert kvm_works() == (verdict.kvm, verdict.reason)


def test_the_reason_is_words_that_say_whether_vms_run_emulated() -> None:
    verdict = accel.kvm_verdict()
    assert verdict.reason and "\n" not in verdict.reason
    assert "qemu-system" not in verdict.reason and "Assertion" not in verdict.reason
    if verdict.emulated:
        assert verdict.accel == "tcg" and "emulated (TCG)" in verdict.reason
    else:
        assert verdict.accel == "kvm" and "KVM works" in verdict.reason


def test_without_dev_kvm_vms_run_emulated_and_no_probe_boots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_verdict: None
) -> None:
    host_with(monkeypatch, tmp_path, device=False, flags={"vmx"})
    launched = probe_boots(monkeypatch, kvm_result("", 0, ready=True))
    verdict = accel.kvm_verdict()
    assert not verdict.kvm and verdict.emulated
    assert verdict.reason.startswith("this machine has no /dev/kvm")
    assert verdict.reason.endswith("so VMs run emulated (TCG), much slower")
    assert launched == []


def test_a_cpu_without_vmx_or_svm_rules_kvm_out_without_a_probe_boot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_verdict: None
) -> None:
    host_with(monkeypatch, tmp_path, device=True, flags={"sse4_2", "hypervisor"})
    launched = probe_boots(monkeypatch, kvm_result("", 0, ready=True))
    verdict = accel.kvm_verdict()
    assert not verdict.kvm
    assert "no vmx or svm flag" in verdict.reason and "emulated (TCG)" in verdict.reason
    assert launched == [], "the flags decided: no qemu was started"


def test_a_qemu_assertion_becomes_words_and_stays_in_the_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_verdict: None
) -> None:
    host_with(monkeypatch, tmp_path, device=True, flags={"svm"})
    launched = probe_boots(monkeypatch, kvm_result(ASSERTION, -6))
    verdict = accel.kvm_verdict()
    assert launched == ["kvm"]
    assert not verdict.kvm
    assert verdict.reason == (
        "/dev/kvm is there, but a probe guest did not boot with KVM (qemu stopped at once"
        " while it set up the virtual CPU: a KVM without full hardware virtualisation, such"
        " as a nested or paravirtualised one), so VMs run emulated (TCG), much slower"
    )
    assert verdict.qemu_log == ASSERTION
    assert kvm_result(ASSERTION, -6).qemu_log == ASSERTION.rstrip("\n"), "qemu's lines only"
    # Decided once: the doctor, boot() and the baseline all get this same answer.
    assert accel.kvm_verdict() is verdict
    assert _check_kvm().reason == verdict.reason


def test_a_probe_that_boots_proves_kvm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_verdict: None
) -> None:
    host_with(monkeypatch, tmp_path, device=True, flags={"vmx"})
    probe_boots(monkeypatch, kvm_result("NSMAGIC-READY uptime=0.10\n", 0, ready=True))
    verdict = accel.kvm_verdict()
    assert verdict.kvm and verdict.accel == "kvm" and not verdict.emulated
    assert verdict.reason == "KVM works: a probe guest booted with it"


def test_the_doctor_builds_no_image_and_says_kvm_is_not_yet_proven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_verdict: None
) -> None:
    host_with(monkeypatch, tmp_path, device=True, flags={"vmx"})
    launched = probe_boots(monkeypatch, kvm_result("", 0, ready=True))
    monkeypatch.setattr(accel, "cached_image", lambda flavour: None)
    monkeypatch.setattr(accel, "build_image", lambda flavour: pytest.fail("built an image"))
    check = _check_kvm()
    assert check.ok
    assert "confirms KVM once the first VM baseline has built a guest image" in check.reason
    assert launched == [] and accel._verdict is None, "an unproven answer is not remembered"


@pytest.mark.parametrize(
    ("console", "returncode", "timed_out", "words"),
    [
        (ASSERTION, -6, False, "qemu stopped at once while it set up the virtual CPU"),
        ("", -6, False, "qemu stopped at once while it set up the virtual CPU"),
        ("", -9, True, "qemu hung with the guest paused"),
        ("KVM internal error. Suberror: 1\n", -9, False, "KVM stopped the guest with an internal"),
        ("Could not access KVM kernel module: Permission denied\n", 1, False, "could not open"),
        ("something else\n", 1, False, "qemu exited (status 1) before the guest was ready"),
    ],
)
def test_each_way_kvm_fails_is_said_in_words(
    console: str, returncode: int, timed_out: bool, words: str
) -> None:
    said = kvm_failure(console, returncode, timed_out)
    assert words in said
    assert "qemu-system" not in said and "Assertion" not in said and "Suberror" not in said


@pytest.mark.vm
def test_a_real_kvm_probe_here_gives_words_and_keeps_qemus_text_apart(
    monkeypatch: pytest.MonkeyPatch, fresh_verdict: None
) -> None:
    # Past the flags, whatever this host has: qemu itself is asked to boot with KVM.
    monkeypatch.setattr(accel, "host_reason", lambda: None)
    verdict = accel.kvm_verdict()
    assert "Assertion" not in verdict.reason and "qemu-system" not in verdict.reason
    if verdict.kvm:
        assert verdict.reason == "KVM works: a probe guest booted with it"
    else:
        assert verdict.reason.startswith("/dev/kvm is there, but a probe guest did not boot")
        print(f"qemu said: {verdict.qemu_log!r}")
