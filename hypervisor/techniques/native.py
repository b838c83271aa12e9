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
from ..machine.interrupts import GP, CpuFrame, DeliveryFault, deliver_flat, table_descriptor
from ..memory.walker import EventMemory, GuestAddressSpace, Paging
from ..vmm.emulate import MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP
from ..vmm.exits import Exit, ExitReason
from ..vmm.monitor import Event, EventKind, Monitor, VcpuState, software_interrupt_length

EFLAGS_VM, EFLAGS_RF = 1 << 17, 1 << 16
_PAGING_REGISTERS = (CR0, CR3, CR4)
_FRAME_REGISTERS = (CS, EFLAGS, ESP, SS)
_EVENT_REGISTERS = (CS, EFLAGS, ESP, SS, CR0, CR3, CR4)   # CR3 and CR4 in the same batch: the guest may change them
CR0_PG = 1 << 31


class RealView:
    """The real CPU's tables and CPL, for delivery on the bare machine.

    Made once per event: the tables are read through the fast register path, and with
    paging off a linear address is guest-physical, so memory is read directly. It hands
    out the CPU itself too: an event through a task gate replaces the CPU's whole state
    (machine/taskswitch.py, ``TaskSwitchView``).
    """

    def __init__(self, native: "Native"):
        cpu = native.cpu
        self.cpl = cpu.cpl
        self.idt_base, self.idt_limit = cpu.table_register(IDTR)
        self.gdt_base, self.gdt_limit = cpu.table_register(GDTR)
        self.cpu = cpu
        self._native = native
        if native.paging().cr0 & CR0_PG:
            self._read, self._write = native.space.read, native.space.write
        else:
            memory = native.pc.memory
            self._read, self._write = memory.read, memory.write

    def read_linear(self, address: int, length: int) -> bytes:
        return self._read(address & 0xFFFFFFFF, length)

    def write_linear(self, address: int, data: bytes) -> None:
        self._write(address & 0xFFFFFFFF, data)

    def descriptor(self, selector: int) -> Descriptor:
        if selector & 4:
            _, base, limit, _ = self.cpu.segment_register(LDTR)
        else:
            base, limit = self.gdt_base, self.gdt_limit
        return table_descriptor(self.read_linear, base, limit, selector)

    def tss_base(self) -> int:
        return self.cpu.segment_register(TR)[1]

    def address_space_changed(self) -> None:
        """A task switch loaded CR3: read through the new task's page tables from now on."""
        self._native.exit_began()            # forgets the paging registers read for this exit


class Native(Monitor):
    name = "native"
    description = "no monitor: the guest runs at ring 0 on the bare (emulated) PC"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cpu = self.cpu
        self.space = GuestAddressSpace(self.pc.memory, self.paging, self.pc.tlb.walker(self.pc.memory))
        self.window = cpu.interrupt_window_watch()
        self._watching = False           # the window watch is armed for the running slice
        cpu.refuse_port_io_above_iopl()  # io_permitted's rule, before the I/O runs (precise #GP)
        self._paging: Paging | None = None
        self._paged = EventMemory(self.space, self.pc.memory)

    def paging(self) -> Paging:
        """CR0, CR3 and CR4 as the guest left them; read once per exit (only the guest's
        own instructions change them, and none runs while the monitor handles an exit)."""
        paging = self._paging
        if paging is None:
            paging = self._paging = Paging(*self.cpu.read_batch(_PAGING_REGISTERS))
        return paging

    def exit_began(self) -> None:
        self._paging = None

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
        cs, eflags, esp, ss = self.cpu.read_batch(_FRAME_REGISTERS)
        return CpuFrame(eip, cs, eflags, esp, ss)

    def fast_event(self, intno: int, eip: int) -> bool:
        """A fault or ``int n`` with paging off, delivered in one pass: one batched read of
        the registers, the tables straight from RAM (``deliver_flat``), one batched write.
        Anything unusual (paging, a trace to write, a check that fails) takes the general
        path, which does the same work through the views and raises what the CPU would."""
        if self.trace.enabled:
            return False
        cpu = self.cpu
        cs, eflags, esp, ss, cr0, cr3, cr4 = cpu.read_batch(_EVENT_REGISTERS)
        if cr0 & CR0_PG:
            if self.space.fast is None:
                return False
            self._paging = paging = Paging(cr0, cr3, cr4)
            memory = self._paged
            memory.begin(paging)
            write = memory.write
        else:
            memory = self.pc.memory
            write = memory.write
        if intno >= 32:
            software = True                     # no exception has a vector above 31: an ``int n``
        else:
            try:
                software = software_interrupt_length(intno, memory.read((eip - 2) & 0xFFFFFFFF, 2)) > 0
            except IndexError:
                return False
        error = None if software else self.error_code_for(intno)
        idt_base, idt_limit = cpu.table_register(IDTR)
        gdt_base, gdt_limit = cpu.table_register(GDTR)
        done = deliver_flat(memory, write, intno, software, error, cpu.cpl, idt_base, idt_limit,
                            gdt_base, gdt_limit, self._tss_base, eip, cs, eflags, esp, ss)
        if done is None:
            return False
        if not software:
            cpu.forget_fault()
        new_eip, new_cs, new_eflags, new_esp, new_ss, handler_cpl = done
        cpu.clear_interrupt_shadow()          # delivering an event ends any sti/mov-ss shadow
        self.state = VcpuState.RUNNING
        if self.every_exception_exits or self.exception_exits(
                Event(intno, EventKind.SOFTWARE if software else EventKind.EXCEPTION, error, eip)):
            self.stats.add(ExitReason.EXCEPTION_NMI)
        if not cpu.load_ring(handler_cpl, new_cs, new_ss, new_esp, new_eflags, new_eip):
            self.crash(f"cannot load the handler's segments {new_cs:#x}/{new_ss:#x} at ring {handler_cpl}")
        return True

    def _tss_base(self) -> int:
        return self.cpu.segment_register(TR)[1]

    def delivery_view(self) -> RealView:
        return RealView(self)

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        cpu = self.cpu
        cpu.clear_interrupt_shadow()          # delivering an event ends any sti/mov-ss shadow
        if not cpu.load_ring(handler_cpl, frame.cs, frame.ss, frame.esp, frame.eflags, frame.eip):
            self.crash(f"cannot load the handler's segments {frame.cs:#x}/{frame.ss:#x} at ring {handler_cpl}")

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
