"""native: no monitor at all. The guest owns the CPU at ring 0 — the reference bare machine.

This is what the other techniques are measured against, and what QEMU's
``qemu-system-i386`` is compared with. The only Python that runs is the machine's
own: port I/O reaches the device models, and exceptions and interrupts are delivered
through the guest's IDT because Unicorn does not do that itself. Privileged
instructions run directly on the CPU; ``hlt`` returns from Unicorn and the run loop
idles the virtual clock forward.

Two things the hardware would do that Unicorn does not, and so this file must:

* **Seeing IF go up.** ``sti``, ``popf`` and ``iret`` run on the CPU, so nothing tells
  the monitor when a pending interrupt becomes deliverable. A native block hook
  (``InterruptWindowWatch``) stops the CPU at the first translated block that starts
  with IF set — QEMU ends a block after each instruction that can set IF, so this is
  the instruction boundary where hardware takes the interrupt. The sti/mov-ss shadow
  is read from the CPU's own flag.
* **sysenter and sysexit** are no-ops in Unicorn: the monitor performs them (QEMU's
  helper_sysenter / helper_sysexit, the reference).
"""
from __future__ import annotations

from ..machine.cpu import (CR0, CR2, CR3, CR4, CS, EFLAGS, CpuError, EFLAGS_IF, EFLAGS_IOPL, EIP, ESP,
                           GDTR, IDTR, LDTR, SS, TR)
from ..machine.descriptors import Descriptor
from ..machine.faults import GuestFault
from ..machine.interrupts import GP, CpuFrame, DeliveryFault, table_descriptor
from ..memory.walker import GuestAddressSpace, Paging
from ..vmm.emulate import MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP
from ..vmm.exits import Exit, ExitReason
from ..vmm.monitor import Monitor

EFLAGS_VM, EFLAGS_RF = 1 << 17, 1 << 16


class RealView:
    """The real CPU's tables and CPL, for delivery on the bare machine."""

    def __init__(self, native: "Native"):
        cpu = native.cpu
        self.space = native.space
        self.cpl = cpu.cpl
        self.idt_base, self.idt_limit = cpu.table_register(IDTR)
        self.gdt_base, self.gdt_limit = cpu.table_register(GDTR)
        self._cpu = cpu

    def read_linear(self, address: int, length: int) -> bytes:
        return self.space.read(address & 0xFFFFFFFF, length)

    def write_linear(self, address: int, data: bytes) -> None:
        self.space.write(address & 0xFFFFFFFF, data)

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cpu = self.cpu
        self.space = GuestAddressSpace(self.pc.memory, self.paging)
        self.window = cpu.interrupt_window_watch()
        self._watching = False           # the window watch is armed for the running slice

    def paging(self) -> Paging:
        cpu = self.cpu
        return Paging(cpu.read(CR0), cpu.read(CR3), cpu.read(CR4))

    def read_linear(self, address: int, length: int) -> bytes:
        return self.space.read(address & 0xFFFFFFFF, length)

    def interrupts_enabled(self) -> bool:
        return bool(self.cpu.read(EFLAGS) & EFLAGS_IF)

    def interrupt_shadow(self) -> bool:
        return self.cpu.interrupt_shadow()

    def watch_interrupt_window(self) -> bool:
        if self.window is None:
            return False
        self.window.arm()
        self._watching = True
        return True

    def after_slice(self, ran: int) -> None:
        window = self.window
        if self._watching:
            self._watching = False
            fired = window.fired
            window.disarm()
            if fired and self.slice_exit is None:
                self.slice_exit = Exit(ExitReason.INTERRUPT_WINDOW, self.cpu.read(EIP))

    def io_permitted(self) -> bool:
        cpl = self.cpu.cpl
        return cpl == 0 or cpl <= (self.cpu.read(EFLAGS) & EFLAGS_IOPL) >> 12

    def set_fault_address(self, cr2: int) -> None:
        self.cpu.write(CR2, cr2)

    def current_frame(self, eip: int) -> CpuFrame:
        cpu = self.cpu
        return CpuFrame(eip, cpu.read(CS), cpu.read(EFLAGS), cpu.read(ESP), cpu.read(SS))

    def delivery_view(self) -> RealView:
        return RealView(self)

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        cpu = self.cpu
        cpu.clear_interrupt_shadow()          # delivering an event ends any sti/mov-ss shadow
        cpl = cpu.cpl                         # QEMU's own CPL: CS.RPL can disagree mid-transfer
        same_ring = handler_cpl == cpl and cpu.try_write(SS, frame.ss) and cpu.try_write(CS, frame.cs)
        if not same_ring:
            if handler_cpl != 0:
                self.crash(f"delivery to a ring-{handler_cpl} handler from ring {cpl} is not modelled "
                           f"under native")
                return
            try:
                cpu.enter_ring0(frame.cs, frame.ss)
            except CpuError as e:
                self.crash(f"cannot load the handler's segments {frame.cs:#x}/{frame.ss:#x}: {e}")
                return
        cpu.write(ESP, frame.esp)
        cpu.write(EFLAGS, frame.eflags)
        cpu.write(EIP, frame.eip)

    # -- sysenter (Unicorn runs it as a no-op; sysexit it runs itself) -------------------------
    def sysenter(self, insn, exit: Exit) -> None:
        cpu = self.cpu
        msrs = {m: cpu.uc.msr_read(m) for m in (MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP)}
        cs = msrs[MSR_SYSENTER_CS] & 0xFFFC
        if not cs:
            raise GuestFault(GP, 0, why="sysenter with SYSENTER_CS null")
        self.record(ExitReason.SYSTEM_CALL, exit.eip, "sysenter",
                    "sysenter: Unicorn runs it as a no-op, so the monitor enters SYSENTER_CS:SYSENTER_EIP", insn)
        cpu.write(EFLAGS, cpu.read(EFLAGS) & ~(EFLAGS_VM | EFLAGS_IF | EFLAGS_RF))
        # QEMU loads fixed flat ring-0 caches without reading the GDT; Unicorn can only load a
        # selector from the GDT, so SYSENTER_CS must name flat code and data there, as every OS has it.
        # Read both through the walker first: a descriptor load that faults inside Unicorn, called
        # from here, would unwind over the interpreter's own frames.
        try:
            view = self.delivery_view()
            code, stack = view.descriptor(cs), view.descriptor(cs + 8)
            if not (code.is_code and code.dpl == 0 and code.present
                    and stack.is_writable_data and stack.dpl == 0 and stack.present):
                raise CpuError("not flat ring-0 code and data")
            if cpu.cpl:
                cpu.enter_ring0(cs, cs + 8)
            elif not (cpu.try_write(SS, cs + 8) and cpu.try_write(CS, cs)):
                raise CpuError("refused")
        except (CpuError, DeliveryFault, GuestFault):
            self.crash(f"sysenter with SYSENTER_CS {cs:#x}, whose GDT entries are not ring-0 code and "
                       f"data: QEMU loads flat segments without the GDT, which hvsim cannot do")
            return
        cpu.write(ESP, msrs[MSR_SYSENTER_ESP] & 0xFFFFFFFF)
        cpu.write(EIP, msrs[MSR_SYSENTER_EIP] & 0xFFFFFFFF)
