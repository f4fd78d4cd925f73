"""%vm_baseline: boot a real minimal VM, measure it beside containers, show the comparison."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Unicode

from nsmagic.errors import NsmagicError
from nsmagic.vm.compare import MACHINES, baseline
from nsmagic.vm.loops import WORKLOADS
from nsmagic.vm.report import Baseline


@magics_class
class VMMagics(Magics):
    """%vm_baseline; defaults come from %config VMMagics.*"""

    memory = Unicode("256M", help="default --memory of the guest").tag(config=True)
    machine = Unicode("microvm", help="default --machine: microvm or q35").tag(config=True)

    @magic_arguments()
    @argument("--memory", help="guest RAM, e.g. 256M (default from %%config VMMagics.memory)")
    @argument("--machine", choices=MACHINES, help="qemu machine type (default microvm)")
    @argument("--runs", type=int, default=3, help="VM boots to take the median of (default 3)")
    @argument(
        "--workload",
        choices=WORKLOADS,
        default="none",
        help="also run the same cpu or memory loop in a VM and a container, sampled "
        "through their cgroups",
    )
    @argument("--seconds", type=float, default=3.0, help="how long the workload runs")
    @argument("--mib", type=int, default=64, help="MiB the memory workload writes")
    @argument("--budget", help="RAM the density estimate divides (default: this machine's)")
    @argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="KVM, TCG (emulated) or auto: KVM only when a probe boot proves it works",
    )
    @argument(
        "--image",
        metavar="REF",
        help="the container image whose program the disk rows compare with the VM's files "
        "(default: busybox built here, the shell the guest runs); from the image store or an "
        "oci:/docker-archive: file",
    )
    @argument(
        "-o",
        "--output-result",
        action="store_true",
        help="return the Baseline object (like %%timeit -o)",
    )
    @argument("-q", "--quiet", action="store_true", help="no table or chart, no progress")
    @line_magic
    def vm_baseline(self, line: str) -> Baseline | None:
        """Boot a real minimal VM with qemu and compare it with containers, measured here.

        Each boot runs qemu in a cgroup of its own (same driver as the containers) and
        samples it the moment the guest is ready: launch-to-ready time, the guest kernel's
        uptime, qemu's RSS/PSS split into guest RAM, TCG code cache and VMM overhead, CPU
        time. Containers are started in the same run. The disk rows are measured in bytes
        on disk: the VM's kernel and initramfs against the container image of the same
        program (busybox, or --image REF), and two images on one base stored once. Without KVM
        the VM is emulated (TCG) and labelled so; without qemu (Binder) the published
        reference figures are shown instead, labelled "published, not measured on this host".

        Examples::

            %vm_baseline
            %vm_baseline --runs 1 --memory 128M --workload cpu
            %vm_baseline --runs 1 --image localhost/nsmagic-vm/python:3.11
            b = %vm_baseline -o -q
        """
        args = parse_argstring(self.vm_baseline, line)  # UsageError on bad options
        if args.runs < 1:
            raise UsageError("%vm_baseline --runs must be at least 1.")
        from nsmagic.widgets.vm_compare import ProgressView, show

        progress = None if args.quiet else ProgressView()
        try:
            result = baseline(
                memory=args.memory or self.memory,
                machine=args.machine or self.machine,
                runs=args.runs,
                workload=args.workload,
                accel=args.accel,
                budget=args.budget,
                seconds=args.seconds,
                mib=args.mib,
                progress=progress,
                image=args.image,
            )
        except (NsmagicError, ValueError) as exc:
            raise UsageError(f"%vm_baseline: {exc}") from exc
        finally:
            if progress is not None:
                progress.close()
        if not args.quiet:
            show(result)
        return result if args.output_result else None
