"""native: no monitor at all. The guest owns the CPU at ring 0 — the reference bare machine.

This is what the other techniques are measured against, and what QEMU's
``qemu-system-i386`` is compared with. The only Python that runs is the machine's
own: port I/O reaches the device models, and exceptions and interrupts are delivered
through the guest's IDT because Unicorn does not do that itself. Privileged
instructions run directly on the CPU; ``hlt`` returns from Unicorn and the run loop
idles the virtual clock forward.
"""
from __future__ import annotations


from ..machine.cpu import (CR0, CR3, CR4, CS, EFLAGS, EFLAGS_IF, EFLAGS_IOPL, EIP, ESP,
                           GDTR, IDTR, LDTR, SS, TR)
from ..machine.descriptors import Descriptor
from ..machine.interrupts import CpuFrame, table_descriptor
from ..machine.linear import LinearMemory
from ..vmm.monitor import Monitor


class RealView:
    """The real CPU's tables and CPL, for delivery on the bare machine."""

    def __init__(self, native: "Native"):
        cpu = native.cpu
        self.linear = native.linear_memory()
        self.cpl = cpu.read(CS) & 3
        self.idt_base, self.idt_limit = cpu.table_register(IDTR)
        self.gdt_base, self.gdt_limit = cpu.table_register(GDTR)
        self._cpu = cpu

    def read_linear(self, address: int, length: int) -> bytes:
        return self.linear.read(address & 0xFFFFFFFF, length)

    def write_linear(self, address: int, data: bytes) -> None:
        self.linear.write(address & 0xFFFFFFFF, data)

    def descriptor(self, selector: int) -> Descriptor:
        if selector & 4:
            _, base, limit, _ = self._cpu.segment_register(LDTR)
        else:
            base, limit = self.gdt_base, self.gdt_limit
        return table_descriptor(self.read_linear, base, limit, selector)

    def tss_base(self) -> int:
        return self._cpu.segment_register(TR)[1]


class Native(Monitor):
    name = "native"
    description = "no monitor: the guest runs at ring 0 on the bare (emulated) PC"

    def linear_memory(self) -> LinearMemory:
        lm = LinearMemory(self.pc.memory)
        lm.set_control(self.cpu.read(CR0), self.cpu.read(CR3), self.cpu.read(CR4))
        return lm

    def read_linear(self, address: int, length: int) -> bytes:
        return self.linear_memory().read(address & 0xFFFFFFFF, length)

    def interrupts_enabled(self) -> bool:
        return bool(self.cpu.read(EFLAGS) & EFLAGS_IF)

    def io_permitted(self) -> bool:
        cpl = self.cpu.read(CS) & 3
        return cpl == 0 or cpl <= (self.cpu.read(EFLAGS) & EFLAGS_IOPL) >> 12

    def current_frame(self, eip: int) -> CpuFrame:
        cpu = self.cpu
        return CpuFrame(eip, cpu.read(CS), cpu.read(EFLAGS), cpu.read(ESP), cpu.read(SS))

    def delivery_view(self) -> RealView:
        return RealView(self)

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        cpu = self.cpu
        if handler_cpl == 0 and cpu.read(CS) & 3:
            cpu.enter_ring0(frame.cs, frame.ss)
        else:
            if handler_cpl != cpu.read(CS) & 3:
                self.guest_crash(f"delivery to a ring-{handler_cpl} handler is not modelled")
                return
            cpu.write(SS, frame.ss)
            cpu.write(CS, frame.cs)
        cpu.write(ESP, frame.esp)
        cpu.write(EFLAGS, frame.eflags)
        cpu.write(EIP, frame.eip)
