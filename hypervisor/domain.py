"""A domain: one guest's memory, vCPU, devices and monitor, on a machine shared with others.

Xen's word for a virtual machine. The machine (``MachineMemory``, the frame table) is
one for all domains; each domain gets frames from it, which its P2M stitches into a
pseudo-physical address space, its own Unicorn instance as its vCPU, its own PC devices,
and the monitor of the technique it runs under. A domain runs one *slice* at a time
and returns, so a scheduler can interleave several on the one machine; ``destroy``
gives every frame back, whatever state the guest left them in.
"""
from __future__ import annotations

from typing import Callable

from .image.multiboot import KernelImage
from .machine.memory import MachineMemory
from .machine.pc import PC
from .techniques import TECHNIQUES
from .vmm.monitor import Monitor, RunResult
from .vmm.trace import Trace


class Domain:
    def __init__(self, machine: MachineMemory, domid: int, memory_bytes: int, technique: str,
                 trace: Trace | None = None, max_instructions: int = 500_000_000,
                 on_console: Callable[[int], None] | None = None, name: str | None = None):
        self.machine = machine
        self.domid = domid
        self.name = name or f"domain-{domid}"
        self.pc = PC(machine, memory_bytes, on_console=on_console, owner=domid)
        self.monitor: Monitor = TECHNIQUES[technique](self.pc, trace, max_instructions)
        self._started = False

    def load(self, kernel: KernelImage, cmdline: bytes = b"") -> None:
        self.pc.load_kernel(kernel, cmdline)

    @property
    def finished(self) -> bool:
        return self.monitor.finished

    def run_slice(self) -> None:
        """Run the guest for one slice (to its next exit) and come back."""
        if not self._started:
            self.monitor.start()
            self._started = True
        if not self.monitor.finished:
            self.monitor.step()

    def run(self) -> RunResult:
        while not self.finished:
            self.run_slice()
        return self.monitor.result()

    def destroy(self) -> None:
        """Give every frame back to the machine; the domain cannot run again."""
        self.pc.memory.release()
