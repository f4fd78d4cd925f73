"""Where the host allows no namespaces at all (no root, user namespaces forbidden, as on
many hosted notebook services), %%container still runs the cell, as a plain child process
with rlimits, and says so on every run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

SANDBOX = Path(__file__).parent.parent / "notebooks" / "sandbox.py"
SCRIPT = textwrap.dedent("""
    from IPython.testing.globalipapp import start_ipython
    ip = start_ipython()
    ip.run_line_magic('load_ext', 'nsmagic')
    r = ip.run_cell('%%container --memory 64M\\nimport os\\nprint("uid", os.getuid())\\n'
                    'x = bytearray(200 << 20)')
    print("cell failed with", type(r.error_in_exec).__name__)
    r = ip.run_cell('%%container --hostname box\\npass')
    print("hostname:", type(r.error_in_exec).__name__)
    ip.run_line_magic('unload_ext', 'nsmagic')
""")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="building the sandbox switches to uid 65534")
def test_a_host_without_namespaces_runs_cells_labelled_not_isolated():
    # Not pytest's tmp_path: it sits under a directory only root may enter.
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o777)
    script = tmp_path / "cell.py"
    script.write_text(SCRIPT)
    script.chmod(0o644)
    try:
        completed = subprocess.run(
            [sys.executable, str(SANDBOX), "--uid", "65534", "--home", str(home), "--",
             sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        )
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    output = completed.stdout + completed.stderr
    assert "nsmagic: NOT isolated: this host allows no namespaces" in output, output
    assert "uid 65534" in output  # the host's user: no user namespace made it 0
    assert "MemoryError" in output and "cell failed with ContainerError" in output
    assert "hostname: UsageError" in output


KILL_SCRIPT = """
import os, signal, sys, time
import nsmagic
container = nsmagic.Container()
container.start("import os, time\\nprint(os.getpid(), flush=True)\\ntime.sleep(60)")
line = os.read(container.output_fds["stdout"], 100).split()[0]
while not container.pid_known:
    container.handle_message(container.message_sockets[0])
container.send_signal(signal.SIGKILL)  # pid 1 only: no pid namespace takes the rest along
container.wait(timeout=30)
deadline = time.monotonic() + 5
while os.path.exists(f"/proc/{int(line)}") and time.monotonic() < deadline:
    time.sleep(0.05)
print("payload alive:", os.path.exists(f"/proc/{int(line)}"))
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="building the sandbox switches to uid 65534")
def test_without_a_pid_namespace_a_killed_pid_1_takes_its_payload_along():
    # Orphans of a pid 1 killed before it could kill them reach the fork server (the next
    # subreaper up), which kills them: without a pid namespace or a cgroup nothing else can.
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))
    os.chmod(tmp_path, 0o755)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    script.chmod(0o644)
    try:
        completed = subprocess.run(
            [sys.executable, str(SANDBOX), "--uid", "65534", "--home", str(tmp_path), "--",
             sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        )
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert "payload alive: False" in completed.stdout, completed.stdout + completed.stderr
