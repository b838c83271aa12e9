"""A domain: one guest's memory, vCPU, devices and monitor, on a machine shared with others.

Xen's word for a virtual machine. The machine (``MachineMemory``, the frame table) is
one for all domains; each domain gets frames from it, which its P2M stitches into a
pseudo-physical address space, its own Unicorn instance as its vCPU, its own PC devices,
and the monitor of the technique it runs under. A domain runs one *slice* at a time
and returns, so a scheduler can interleave several on the one machine; ``destroy``
gives every frame back, whatever state the guest left them in.

While a slice runs, the calling thread is inside Unicorn (``emu_start``) and may stay there
for seconds: a compute-bound guest exits a handful of times a run. So a progress display
cannot wait for the loop to come back; ``progress`` is written to be called from *another*
thread at any moment. It reads only plain Python values the loop keeps (never Unicorn, whose
state is not safe to read while it runs), so it cannot change what the guest does: exits
are counted as they happen, instructions and virtual time as of the last slice's end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .image.multiboot import KernelImage
from .machine.memory import MachineMemory
from .machine.pc import PC
from .techniques import technique_class
from .vmm.monitor import Monitor, RunResult
from .vmm.trace import Trace


@dataclass(frozen=True)
class Progress:
    """How far a running domain has got (see ``Domain.progress``)."""
    instructions: int        # guest instructions retired by the end of the last slice
    exits: int
    virtual_ns: int          # the guest's clock at the end of the last slice
    wall_s: float            # since the domain started running


class Domain:
    def __init__(self, machine: MachineMemory, domid: int, memory_bytes: int, technique: str,
                 trace: Trace | None = None, max_instructions: int = 500_000_000,
                 on_console: Callable[[int], None] | None = None, name: str | None = None):
        self.machine = machine
        self.domid = domid
        self.name = name or f"domain-{domid}"
        self.pc = PC(machine, memory_bytes, on_console=on_console, owner=domid)
        self.monitor: Monitor = technique_class(technique)(self.pc, trace, max_instructions)
        self._started = False
        self._wall_start: float | None = None
        self._at_slice_end = (0, 0)       # (instructions, virtual ns) when the last slice ended

    def load(self, kernel: KernelImage, cmdline: bytes = b"") -> None:
        self.pc.load_kernel(kernel, cmdline)

    @property
    def finished(self) -> bool:
        return self.monitor.finished

    def run_slice(self) -> None:
        """Run the guest for one slice (to its next exit) and come back."""
        if not self._started:
            self._wall_start = time.perf_counter()
            self.monitor.start()
            self._started = True
        if not self.monitor.finished:
            self.monitor.step()
            # Read here, between slices: while one runs, the clock asks Unicorn for its count.
            self._at_slice_end = (self.monitor.instructions, self.pc.clock.now)

    def run(self) -> RunResult:
        while not self.finished:
            self.run_slice()
        return self.monitor.result()

    def progress(self) -> Progress:
        """A snapshot for a progress display; safe from any thread while the domain runs."""
        monitor = self.monitor
        try:
            exits = sum(dict(monitor.stats.counts).values())   # dict() copies under the GIL
        except Exception:                  # counting must never break the run it watches
            exits = 0
        wall = 0.0 if self._wall_start is None else time.perf_counter() - self._wall_start
        instructions, virtual_ns = self._at_slice_end
        return Progress(instructions, exits, virtual_ns, wall)

    def destroy(self) -> None:
        """Give every frame back to the machine; the domain cannot run again."""
        self.pc.memory.release()
