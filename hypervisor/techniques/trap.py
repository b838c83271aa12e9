"""trap: classic trap-and-emulate, with the guest kernel deprivileged to ring 1.

Popek and Goldberg's recipe: run the guest kernel with less privilege than it thinks
it has, so that every *privileged* instruction traps to the monitor, which emulates it
on virtual state. Here the kernel runs in ring 1 ("ring compression"), guest user code
in ring 3, and the monitor keeps the kernel's IF, control registers, GDTR/IDTR/LDTR/TR
and CPL in a ``VirtualCpu``.

What the monitor arranges:

* **Shadow GDT.** The real GDTR points at the monitor's copy of the guest GDT in which
  every DPL-0 segment has become DPL 1, so the kernel's own selectors still work in
  ring 1. There are two views: in the kernel's, the guest's ring-3 *code* segments are
  marked not present, so the kernel's ``iret`` to user mode faults (#NP) and the
  monitor sees the IF and IOPL it pops; in the user's view they are present.
* **Reflection.** Faults, ``int n`` and PIC interrupts are delivered through the
  guest's own IDT with the frame the guest expects (its ring-0 selectors, its virtual
  IF), using the machine's one delivery routine on a *virtual* view of the CPU.
* **Entering the guest** at any ring goes through a one-instruction monitor stub: the
  CPU is dropped to ring 0 (see ``Cpu.enter_ring0``) and ``iretd`` to the target.

What it does **not** do, on purpose: the sensitive-but-unprivileged instructions
(``pushf``, ``popf``, ``sgdt``, ``sidt``, ``sldt``, ``str``, ``smsw``, ``mov r, cs``,
``lar``, ``lsl``, ``verr``, ``verw``) do not trap on x86, so they run on the real CPU
and show the guest the real state. That is x86 failing Popek and Goldberg's test.
"""
from __future__ import annotations

import struct

from unicorn import UC_PROT_ALL

from ..errors import UnsupportedGuest
from ..machine.cpu import (CR0, CR2, CR3, CR4, CS, DS, EFLAGS, EFLAGS_IF, EFLAGS_IOPL, EIP, ES, ESP, FS, GDTR, GS,
                           IDTR, SS, TR)
from ..machine.descriptors import (TSS32_AVAILABLE, Descriptor, decode_descriptor,
                                   encode_segment, with_dpl, with_present)
from ..machine.interrupts import GP, NP, CpuFrame, DeliveryFault, table_descriptor
from ..vmm.emulate import EMULATORS, Unemulated
from ..vmm.exits import ExitReason
from ..vmm.monitor import Monitor
from ..vmm.vcpu import VirtualCpu

# The monitor's own memory, outside guest RAM (not yet protected from the guest:
# segment truncation and shadow paging come with the shadow-page-table issue).
MONITOR_BASE = 0xFFC00000
KERNEL_GDT = MONITOR_BASE              # shadow GDT, kernel view (64 KiB: 8192 entries)
USER_GDT = MONITOR_BASE + 0x10000      # shadow GDT, user view
MONITOR_IDT = MONITOR_BASE + 0x20000   # what the real IDTR shows (never used: Unicorn never delivers)
MONITOR_TSS = MONITOR_BASE + 0x21000
IRET_STUB = MONITOR_BASE + 0x22000     # a single iretd
MONITOR_STACK = MONITOR_BASE + 0x23F00
MONITOR_SIZE = 0x24000
# Monitor selectors at the top of the shadow GDT, above any guest entry.
MON_CS, MON_DS, MON_TSS = 0xFFE8, 0xFFF0, 0xFFF8
GDT_LIMIT = 0xFFFF


class VirtualView:
    """The guest's own tables and virtual CPL, for delivering events the way it expects."""

    def __init__(self, m: "TrapAndEmulate"):
        self.m = m
        v = m.vcpu
        self.cpl, self.idt_base, self.idt_limit = v.cpl, v.idt_base, v.idt_limit

    def read_linear(self, address, length):
        return self.m.read_linear(address, length)

    def write_linear(self, address, data):
        self.m.pc.memory.write(address & 0xFFFFFFFF, data)

    def descriptor(self, selector: int) -> Descriptor:
        return self.m.guest_descriptor(selector)

    def tss_base(self) -> int:
        return self.m.vcpu.tr_base


class TrapAndEmulate(Monitor):
    name = "trap"
    description = "trap-and-emulate: guest kernel in ring 1, privileged instructions trap (#GP) and are emulated"
    sees_interrupt_flag = True       # cli, sti and iret trap; popf does not, as on real x86

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vcpu = VirtualCpu()
        self.cpu.uc.mem_map(MONITOR_BASE, MONITOR_SIZE, UC_PROT_ALL)
        self.cpu.uc.mem_write(IRET_STUB, b"\xcf")
        self.cpu.uc.mem_write(MONITOR_TSS, bytes(104))

    # -- boot ----------------------------------------------------------------------------
    def boot(self) -> None:
        cpu, v = self.cpu, self.vcpu
        # The virtual CPU starts as the PC left the real one: Multiboot's entry state.
        v.gdt_base, v.gdt_limit = cpu.table_register(GDTR)
        v.idt_base, v.idt_limit = cpu.table_register(IDTR)
        v.cr0, v.cr2, v.cr3, v.cr4 = (cpu.read(r) for r in (CR0, CR2, CR3, CR4))
        self.rebuild_shadow_gdt()
        cpu.set_table_register(IDTR, MONITOR_IDT, 0x7FF)
        cpu.set_segment_register(TR, MON_TSS, MONITOR_TSS, 0x67, 0x8B)
        self.enter_guest(CpuFrame(cpu.read(EIP), cpu.read(CS), cpu.read(EFLAGS), cpu.read(ESP),
                                  cpu.read(SS)), 0)

    # -- shadow descriptor tables -----------------------------------------------------------
    def guest_descriptor(self, selector: int) -> Descriptor:
        if selector & 4:
            raise DeliveryFault(GP, selector & 0xFFFC, "LDT selectors are not supported under trap yet")
        return table_descriptor(self.read_linear, self.vcpu.gdt_base, self.vcpu.gdt_limit, selector)

    def rebuild_shadow_gdt(self) -> None:
        """Copy the guest GDT into both shadow views, compressing ring 0 into ring 1."""
        v = self.vcpu
        count = min((v.gdt_limit + 1) // 8, MON_CS // 8)
        raw = self.read_linear(v.gdt_base, count * 8) if count else b""
        kernel, user = [], []
        for (entry,) in struct.iter_unpack("<Q", raw):
            d = decode_descriptor(entry)
            if not d.system and d.dpl == 0:
                entry = with_dpl(entry, 1)
            user.append(entry)
            kernel.append(with_present(entry, False) if d.is_code and d.dpl == 3 else entry)
        monitor = [encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92),
                   encode_segment(MONITOR_TSS, 0x67, 0x8B, 0x0)]
        for base, entries in ((KERNEL_GDT, kernel), (USER_GDT, user)):
            self.cpu.uc.mem_write(base, struct.pack(f"<{len(entries)}Q", *entries))
            self.cpu.uc.mem_write(base + MON_CS, struct.pack("<3Q", *monitor))
        self._select_gdt_view()

    def _select_gdt_view(self) -> None:
        self.cpu.set_table_register(GDTR, KERNEL_GDT if self.vcpu.cpl == 0 else USER_GDT, GDT_LIMIT)

    def load_task_register(self, selector: int) -> None:
        d = self.guest_descriptor(selector)
        if not d.system or d.type != TSS32_AVAILABLE or not d.present:
            raise Unemulated(f"ltr {selector:#x}: not an available 32-bit TSS")
        # The CPU marks the TSS busy in the guest's GDT, as ltr does.
        addr = self.vcpu.gdt_base + (selector & 0xFFF8)
        self.pc.memory.write(addr + 5, bytes([self.read_linear(addr + 5, 1)[0] | 0x2]))
        self.vcpu.tr, self.vcpu.tr_base = selector, d.base
        self.rebuild_shadow_gdt()

    def load_stack_segment(self, selector: int) -> None:
        d = self.guest_descriptor(selector)
        if selector & 3 != self.vcpu.cpl or d.dpl != self.vcpu.cpl or not d.is_writable_data:
            raise Unemulated(f"mov ss, {selector:#x}")
        self.cpu.write(SS, selector | self._real_rpl(self.vcpu.cpl))

    # -- virtual <-> real -------------------------------------------------------------------
    @staticmethod
    def _real_rpl(virtual_cpl: int) -> int:
        return 1 if virtual_cpl == 0 else virtual_cpl

    def _virtual_selector(self, real: int) -> int:
        return (real & ~3) | (0 if real & 3 == 1 else real & 3)

    def interrupts_enabled(self) -> bool:
        return self.vcpu.iflag

    def io_permitted(self) -> bool:
        return self.vcpu.cpl <= self.vcpu.iopl

    def read_linear(self, address: int, length: int) -> bytes:
        return self.pc.memory.read(address & 0xFFFFFFFF, length)

    def current_frame(self, eip: int) -> CpuFrame:
        cpu, v = self.cpu, self.vcpu
        eflags = cpu.read(EFLAGS) & ~(EFLAGS_IF | EFLAGS_IOPL)
        eflags |= (EFLAGS_IF if v.iflag else 0) | (v.iopl << 12)
        return CpuFrame(eip, self._virtual_selector(cpu.read(CS)), eflags, cpu.read(ESP),
                        self._virtual_selector(cpu.read(SS)))

    def delivery_view(self) -> VirtualView:
        return VirtualView(self)

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        self.enter_guest(frame, handler_cpl)

    def enter_guest(self, frame: CpuFrame, virtual_cpl: int) -> None:
        """Resume the guest at a virtual frame: through the iretd stub, at real ring 1 or 3."""
        cpu, v = self.cpu, self.vcpu
        v.iopl = (frame.eflags & EFLAGS_IOPL) >> 12
        v.cpl = virtual_cpl
        v.iflag = bool(frame.eflags & EFLAGS_IF)
        rpl = self._real_rpl(virtual_cpl)
        real_flags = (frame.eflags & ~EFLAGS_IOPL) | EFLAGS_IF
        self._select_gdt_view()
        data_regs = {r: cpu.read(r) for r in (DS, ES, FS, GS)}
        cpu.enter_ring0(MON_CS, MON_DS)
        for reg, sel in data_regs.items():
            if not cpu.try_write(reg, sel):
                cpu.write(reg, 0)
        cpu.uc.mem_write(MONITOR_STACK, struct.pack("<5I", frame.eip, (frame.cs & ~3) | rpl,
                                                    real_flags, frame.esp, (frame.ss & ~3) | rpl))
        cpu.write(ESP, MONITOR_STACK)
        cpu.write(EIP, IRET_STUB)
        self.stub_entries += 1

    def stub_pending(self) -> bool:
        return self.stub_entries > 0 and self.cpu.read(EIP) == IRET_STUB

    # -- traps -------------------------------------------------------------------------------
    def on_fault(self, vector: int, eip: int) -> None:
        if self.vcpu.cpl == 0 and vector in (GP, NP):
            insn = self.fetch(eip)
            if insn is not None:
                try:
                    if insn.mnemonic in ("iretd", "iret"):
                        self.emulate_iret(insn)
                        return
                    handler = EMULATORS.get(insn.mnemonic)
                    if handler is not None and vector == GP:
                        reason, why = handler(self, insn)
                        self.record(reason, eip, insn.mnemonic, why, insn)
                        next_eip = (eip + insn.size) & 0xFFFFFFFF
                        if insn.mnemonic == "hlt":
                            self.halt(next_eip)
                        else:
                            self.cpu.write(EIP, next_eip)
                        return
                except Unemulated:
                    pass
        super().on_fault(vector, eip)

    def after_sti(self) -> None:
        # sti's shadow: the interrupt is taken after the *next* instruction, so that
        # `sti; hlt` wakes from the hlt rather than before it.
        if self._pic_pending():
            self.single_step = True
            self.cpu.uc.emu_stop()

    def emulate_iret(self, insn) -> None:
        cpu, v = self.cpu, self.vcpu
        esp = cpu.read(ESP)
        eip, cs, eflags = struct.unpack("<3I", self.read_linear(esp, 12))
        cs &= 0xFFFF
        target_cpl = cs & 3
        if target_cpl < v.cpl:
            raise Unemulated("iret to a more privileged ring")
        if target_cpl > v.cpl:
            new_esp, ss = struct.unpack("<2I", self.read_linear(esp + 12, 8))
            ss &= 0xFFFF
        else:
            new_esp, ss = esp + 12, self._virtual_selector(cpu.read(SS))
        if v.cpl > 0:   # IF and IOPL only change when iret runs at (virtual) CPL 0
            eflags = (eflags & ~(EFLAGS_IF | EFLAGS_IOPL)) | (EFLAGS_IF if v.iflag else 0) | (v.iopl << 12)
        self.record(ExitReason.IRET, cpu.read(EIP), "iret",
                    f"iret in ring 1 faults on the guest's ring-{target_cpl} selector; the monitor pops "
                    f"the frame (virtual IF={int(bool(eflags & EFLAGS_IF))}) and resumes the guest", insn)
        self.enter_guest(CpuFrame(eip, cs, eflags, new_esp, ss), target_cpl)
        if self._pic_pending() and v.iflag:
            self.wants_injection = True
            cpu.uc.emu_stop()

    def unsupported_paging(self, cr0: int) -> None:
        raise UnsupportedGuest(
            f"the guest enabled paging (mov cr0, {cr0:#x}): trap-and-emulate runs paged guests only "
            f"with shadow page tables, which hvsim does not have yet; run it with --technique native")
