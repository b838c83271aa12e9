"""trap: classic trap-and-emulate, with the guest kernel deprivileged to ring 1.

Popek and Goldberg's recipe: run the guest kernel with less privilege than it thinks
it has, so that every *privileged* instruction traps to the monitor, which emulates it
on virtual state. Here the kernel runs in ring 1 ("ring compression"), guest user code
in ring 3, and the monitor keeps the kernel's IF, control registers, GDTR/IDTR/LDTR/TR
and CPL in a ``VirtualCpu``.

What the monitor arranges, and why each piece is needed for the deprivileging to hold:

* **Shadow GDT.** The real GDTR points at the monitor's copy of the guest GDT. Every
  entry is checked on the way in:
  - code and data segments keep their type; DPL 0 becomes DPL 1 (guest ring 1 shares
    real ring 1 with the kernel; rings 2 and 3 stay where they are);
  - the accessed bit is set in advance, so the CPU itself never writes the shadow;
  - system descriptors — TSSs, LDTs, call and task gates — are never copied: a far
    transfer through one would reach real ring 0. They appear not present, and the
    monitor handles the fault;
  - entries past the guest's limit are null, and the monitor's own three descriptors sit
    at the top, above any selector the guest's table can name.
  There are two views. In the kernel's (virtual CPL 0) every non-conforming code segment
  of a less privileged ring is not present, so each ``iret``/``retf`` out of the kernel
  faults and the monitor sees the ring, IF and IOPL it pops; in the view for rings 1-3
  the kernel's code is not present, so no jump reaches it without the monitor.
* **The guest's GDT is write-protected** in the frame table: a write to it traps and
  the shadow follows the edit, so a stale shadow is never loaded by the CPU.
* **Shadow LDT.** The same, for the LDT the guest loads with ``lldt``: the virtual LDTR
  caches its descriptor, the real LDTR points at the monitor's checked copy (two views,
  switched with the GDT's), and the LDT's frames are write-protected.
* **Shadow paging.** The guest's page tables are only data: the C TLB fill walks them
  against the virtual CR0/CR3/CR4 (hypervisor/memory/shadow.py), so the real CPU runs with
  paging off and every translation it uses is one the monitor made.
* **The monitor's memory is out of every guest ring's reach.** VMware's monitor and 32-bit
  Xen truncated the guest's segments below themselves; QEMU's CPU (and so Unicorn) does
  not check data-segment limits, so truncation protects nothing here. Instead the
  monitor's tables lie above 4 GiB: QEMU reads a descriptor at the table's full 64-bit
  base, while every address a 32-bit guest forms is cut to 32 bits, so no guest access
  reaches them — a guest touching 0xFFC00000 finds nothing there, as under native. That
  needs the C TLB fill (machine/native/tlbfill.c) to map linear to physical; without it
  the tables lie just below 4 GiB, mapped read/execute only (a guest write is dropped, as
  the bare machine drops a write to an unassigned address), under a read hook that lets
  through only the CPU's own reads (a descriptor for a segment load): a guest instruction
  that reads them ends the run, as an access outside RAM ends it under native.
* **Reflection.** Faults, ``int n`` and PIC interrupts are delivered through the
  guest's own IDT with the frame the guest expects (its selectors, its virtual IF),
  using the machine's one delivery routine on a *virtual* view of the CPU.
* **Entering the guest** at any ring is a batched load of CS:EIP, SS:ESP and EFLAGS with
  the CPL set first, as the hardware's own far transfer does it (``Cpu.load_ring``); a
  return to an outer ring then nulls the data segments that ring may not use, as iret does.

What it does **not** do, on purpose: the sensitive-but-unprivileged instructions
(``pushf``, ``popf``, ``sgdt``, ``sidt``, ``sldt``, ``str``, ``smsw``, ``mov r, cs``,
``lar``, ``lsl``, ``verr``, ``verw``) do not trap on x86, so they run on the real CPU
and show the guest the real state. That is x86 failing Popek and Goldberg's test.
"""
from __future__ import annotations

import struct
from functools import lru_cache

from ..errors import UnsupportedGuest
from ..machine.cpu import (CR0, CR2, CR3, CR4, CS, DS, ECX, EDX, EFLAGS, EFLAGS_IF, EFLAGS_IOPL, EIP, ES, ESP, FS,
                           GDTR, GPR_BY_NAME, GS, IDTR, LDTR, SS, TR)
from ..machine.descriptors import (CALL_GATE32, TSS32_AVAILABLE, Descriptor, decode_descriptor, encode_segment,
                                   unicorn_flags, with_dpl, with_present)
from ..machine.faults import BusError, GuestFault
from ..machine.native.readguard import ReadGuard
from ..machine.interrupts import (GP, NP, SS_FAULT, CpuFrame, DeliveryFault, deliver_flat, table_descriptor,
                                  through_call_gate)
from ..memory.shadow import ShadowPaging
from ..memory.walker import CR0_PG, CR4_PAE, EventMemory, GuestAddressSpace, Paging, translate
from ..machine.taskswitch import TS_VECTOR
from ..vmm.decode import MAX_INSN, SEGMENT_REGISTERS, Imm, Instruction, Mem, Reg, decode
from ..vmm.emulate import EMULATORS, MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP, TRANSFERS, Unemulated
from ..vmm.exits import Exit, ExitReason
from ..vmm.monitor import Monitor, VcpuState, software_interrupt_length
from ..vmm.vcpu import VirtualCpu

# The monitor's own memory: the shadow GDT in its two views, and the IDT and TSS the real
# CPU's registers show. Above 4 GiB, where no 32-bit guest address reaches, when the C TLB fill
# maps linear to physical (machine/native/tlbfill.c: QEMU's helpers read descriptors at the full
# 64-bit table base; every guest address is cut to 32 bits). Without it, just below 4 GiB, kept
# from the guest by a read hook (ReadGuard) and read-only pages.
HIGH_MONITOR = 0x1_FFC0_0000
LOW_MONITOR = 0xFFC00000
KERNEL_GDT = 0x0                       # offsets in the monitor's memory: shadow GDT, kernel view
USER_GDT = 0x10000                     # shadow GDT, view for rings 1-3 (64 KiB each: 8192 entries)
KERNEL_LDT = 0x20000                   # shadow LDT, the same two views
USER_LDT = 0x30000
MONITOR_IDT = 0x40000                  # what the real IDTR shows (never used: Unicorn never delivers)
MONITOR_TSS = 0x41000                  # what TR shows (never used: the CPU never switches stacks here)
MONITOR_SIZE = 0x42000
MON_TSS = 0xFFF8                       # TR's selector: no descriptor behind it (the CPU never reloads TR)
GDT_LIMIT = 0xFFFF
GUEST_ENTRIES = (GDT_LIMIT + 1) // 8
# The real ring each guest ring runs in: the kernel is compressed into ring 1.
REAL_RING = (1, 1, 2, 3)
TASK_SWITCH_TYPES = frozenset({0x1, 0x3, 0x5, 0x9, 0xB})   # TSSs and the task gate
CALL_GATE16 = 0x4
ACCESSED = 1 << 40       # set in every shadow descriptor, so the CPU never writes the shadow


def _refused_from(cpl: int, iopl: int) -> int | None:
    """The real ring from which port I/O is refused (a #GP the block counter must stop before,
    precisely), or None: the virtual rule is CPL > IOPL, and rings 0 and 1 share real ring 1."""
    if cpl <= 1 and cpl > iopl:
        return 1
    return max(2, iopl + 1) if iopl < 3 else None


class _Unguarded:
    """Where no read hook guards the monitor's memory (it lies above 4 GiB), opening it is moot."""
    open = 0
_DATA_SEGMENTS = (DS, ES, FS, GS)
_LDT_FLAGS = unicorn_flags(decode_descriptor(encode_segment(0, 0xFFFF, 0x82, 0x0)))   # a present LDT, cached
_TSS32_BUSY_FLAGS = unicorn_flags(decode_descriptor(encode_segment(0, 0x67, 0x8B, 0x0)))   # the virtual TR's
_SELECTORS = (ES, CS, SS, DS, FS, GS)
# The control-register bits that change only what the guest's own instructions do, and nothing
# of the monitor's: the real CR0 and CR4 follow the virtual ones there (VT-x's bits outside the
# guest/host mask), so x87 and SSE fault as the guest asked (#NM on TS, #UD on EM or without
# OSFXSR) and smsw shows MP/EM/TS as on the bare machine. CR0: MP, EM, TS, NE, AM; CR4: OSFXSR,
# OSXMMEXCPT. PE and PG stay the monitor's; CR4.TSD is not passed (the kernel's own rdtsc runs
# at ring 1 and would fault).
CR0_GUEST_OWNED = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 18)
CR4_GUEST_OWNED = (1 << 9) | (1 << 10)
_IRET_FRAME, _OUTER_STACK = struct.Struct("<3I"), struct.Struct("<2I")
_IRETS = frozenset({"iret", "iretd"})
EFLAGS_VM = 1 << 17
_EVENT_REGISTERS = (CS, EFLAGS, ESP, SS)


@lru_cache(maxsize=1 << 14)
def shadow_descriptor(raw: int, kernel_view: bool) -> int:
    """The descriptor the real CPU may see for a guest descriptor (pure, for tests).

    Never one that reaches real ring 0: see the module header.
    """
    d = decode_descriptor(raw)
    if d.system:
        return with_present(raw, False)          # TSS, LDT, gates: the monitor handles them
    raw = with_dpl(raw, REAL_RING[d.dpl]) | ACCESSED
    if not d.present:
        return raw
    if d.is_code and not d.is_conforming and (d.dpl > 0) == kernel_view:
        raw = with_present(raw, False)           # a ring change the monitor must see
    return raw


# Instructions whose execution reads the GDT: segment loads, far transfers, and the
# descriptor-inspecting lar/lsl/verr/verw.
FAR_TRANSFERS = frozenset({"ljmp", "lcall", "retf", "iret", "iretd"})
DESCRIPTOR_INSPECTORS = frozenset({"lar", "lsl", "verr", "verw", "lds", "les", "lfs", "lgs", "lss"})


# The bytes a descriptor-loading instruction reads from the stack: iret's frame (to an outer
# ring), retf's, and a pop into a segment register.
STACK_READS = {"iret": 20, "iretd": 20, "retf": 16, "pop": 4}


def loads_descriptors(insn: Instruction) -> bool:
    name, ops = insn.mnemonic, insn.operands
    if name in FAR_TRANSFERS or name in DESCRIPTOR_INSPECTORS:
        return True
    if name in ("mov", "pop") and ops and isinstance(ops[0], Reg) and ops[0].name in SEGMENT_REGISTERS:
        return True
    return name in ("jmp", "call") and bool(ops) and isinstance(ops[0], Mem) and ops[0].size == 6


class VirtualView:
    """The guest's own tables and virtual CPL, for delivering events the way it expects; and,
    for a hardware task switch (machine/taskswitch.py), a CPU whose TR, LDTR, CR0, CR3,
    EFLAGS and selectors are the virtual ones (``VirtualTaskCpu``)."""

    def __init__(self, m: "TrapAndEmulate"):
        self.m = m
        v = m.vcpu
        self.cpl, self.idt_base, self.idt_limit = v.cpl, v.idt_base, v.idt_limit
        self.cpu = VirtualTaskCpu(m)

    def address_space_changed(self) -> None:
        """A task switch loaded CR3 (``VirtualTaskCpu.write`` already told the shadow)."""

    def read_linear(self, address, length):
        return self.m.read_linear(address, length)

    def write_linear(self, address, data):
        self.m.write_linear(address, data)

    def descriptor(self, selector: int) -> Descriptor:
        return self.m.guest_descriptor(selector)

    def tss_base(self) -> int:
        return self.m.vcpu.tr_base


class VirtualTaskCpu:
    """The CPU as a task switch sees it under trap: what it reads and writes of TR, LDTR, CR0,
    CR3, EFLAGS' IF and IOPL, the CPL and the selectors is the virtual CPU's; general registers
    and EIP are the real ones; loading the new task's CS and SS is ``enter_guest`` (its ring
    compressed like any other entry). So machine/taskswitch.py, written for the real CPU, makes
    a trap guest's task switches too."""

    def __init__(self, m: "TrapAndEmulate"):
        self._m = m
        self._cpu = m.cpu

    @property
    def cpl(self) -> int:
        return self._m.vcpu.cpl

    def table_register(self, reg: int) -> tuple[int, int]:
        v = self._m.vcpu
        if reg == GDTR:
            return v.gdt_base, v.gdt_limit
        return v.idt_base, v.idt_limit

    def segment_register(self, reg: int) -> tuple[int, int, int, int]:
        v = self._m.vcpu
        if reg == TR:
            return v.tr, v.tr_base, v.tr_limit, _TSS32_BUSY_FLAGS
        if reg == LDTR:
            return v.ldtr, v.ldt_base, v.ldt_limit, _LDT_FLAGS if v.ldtr & 0xFFFC else 0
        return self._cpu.segment_register(reg)

    def set_segment_register(self, reg: int, selector: int, base: int, limit: int, flags: int) -> None:
        m, v = self._m, self._m.vcpu
        if reg == TR:
            v.tr, v.tr_base, v.tr_limit = selector, base, limit
        elif reg == LDTR:
            v.ldtr, v.ldt_base, v.ldt_limit = selector, base, limit
            m.rebuild_shadow_ldt()

    def read(self, reg: int) -> int:
        m, v = self._m, self._m.vcpu
        if reg == CR0:
            return v.cr0
        if reg == EFLAGS:
            eflags = self._cpu.read(EFLAGS) & ~(EFLAGS_IF | EFLAGS_IOPL)
            return eflags | (EFLAGS_IF if v.iflag else 0) | (v.iopl << 12)
        if reg in _SELECTORS:
            return m._virtual_selector(self._cpu.read(reg))
        return self._cpu.read(reg)

    def write(self, reg: int, value: int) -> None:
        m, v = self._m, self._m.vcpu
        if reg in (CR0, CR3):
            n = 0 if reg == CR0 else 3
            old = v.control_register(n)
            v.set_control_register(n, value & 0xFFFFFFFF)
            m.control_register_written(n, old, v.control_register(n))
        elif reg == EFLAGS:
            self._set_eflags(value)
        else:
            self._cpu.write(reg, value)

    def _set_eflags(self, value: int) -> None:
        v = self._m.vcpu
        v.iflag, v.iopl = bool(value & EFLAGS_IF), (value & EFLAGS_IOPL) >> 12
        self._cpu.write(EFLAGS, (value & ~EFLAGS_IOPL) | EFLAGS_IF)

    def read_batch(self, regs: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.read(r) for r in regs)

    def write_batch(self, regs: tuple[int, ...], values) -> bool:
        for reg, value in zip(regs, values):
            self.write(reg, value)
        return True

    def load_ring(self, cpl: int, cs: int, ss: int, esp: int, eflags: int, eip: int) -> bool:
        m = self._m
        m.enter_guest(CpuFrame(eip, cs, eflags, esp, ss), cpl)
        return m.pc.stop_requested is None

    def try_write(self, reg: int, selector: int) -> bool:
        guard = self._m._guard
        guard.open = 1
        try:
            return self._cpu.try_write(reg, selector)
        finally:
            guard.open = 0


class TrapAndEmulate(Monitor):
    name = "trap"
    description = "trap-and-emulate: guest kernel in ring 1, privileged instructions trap (#GP) and are emulated"
    sees_interrupt_flag = True       # cli, sti and iret trap; popf does not, as on real x86

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vcpu = VirtualCpu()
        self._gdt_frames: set[int] = set()
        self._shadow_entries = 0
        self._shadow_source: bytes | None = None   # the guest GDT bytes the shadow was built from
        self._io_rule: int | None = -1         # the ring from which port I/O is refused (-1: not said yet)
        above_4g = self.pc.tlb.native
        base = self.monitor_base = HIGH_MONITOR if above_4g else LOW_MONITOR
        self.kernel_gdt, self.user_gdt = base + KERNEL_GDT, base + USER_GDT
        self.kernel_ldt, self.user_ldt = base + KERNEL_LDT, base + USER_LDT
        self._ldt_source: bytes = b""            # the guest LDT bytes the shadow LDT was built from
        self._ldt_frames: set[int] = set()
        self.monitor_memory = self.pc.map_monitor(base, MONITOR_SIZE)
        self.read_guard: ReadGuard | None = None
        if above_4g:
            self._guard = _Unguarded()
        else:
            # Reads of the monitor's memory: the CPU's own pass (open while the monitor loads
            # segment registers); the rest reach _monitor_read.
            self.pc.on_monitor_write = self._guest_wrote_monitor
            self.read_guard = ReadGuard(self.cpu, base, base + MONITOR_SIZE - 1,
                                        (self.kernel_gdt, self.user_ldt + GDT_LIMIT + 1), self._monitor_read,
                                        self._monitor_read_failed)
            self._guard = self.read_guard.flags
        self.handlers[ExitReason.SYSTEM_CALL] = self.handle_system_call
        self.handlers[ExitReason.TABLE_WRITE] = self.handle_table_write
        self.pc.on_write_protected = self._guest_wrote_protected
        # Shadow paging: the guest's tables are walked by the C TLB fill against the virtual
        # CR0/CR3/CR4 (hypervisor/memory/shadow.py says how and why); the monitor's own reads
        # of guest memory walk them too, in Python.
        self.shadow = above_4g
        self.mmu: ShadowPaging | None = None
        self.space = GuestAddressSpace(self.pc.memory, self.paging, self.pc.tlb.walker(self.pc.memory))
        self._paged = EventMemory(self.space, self.pc.memory)
        self._walks = 0                        # the fill's walk count at the last slice's end

    # -- boot ----------------------------------------------------------------------------
    def boot(self) -> None:
        cpu, v = self.cpu, self.vcpu
        # The virtual CPU starts as the PC left the real one: Multiboot's entry state.
        v.gdt_base, v.gdt_limit = cpu.table_register(GDTR)
        v.idt_base, v.idt_limit = cpu.table_register(IDTR)
        v.cr0, v.cr2, v.cr3, v.cr4 = (cpu.read(r) for r in (CR0, CR2, CR3, CR4))
        if self.shadow:
            self.mmu = ShadowPaging(self.pc, self.paging())
        self.rebuild_shadow_gdt()
        base = self.monitor_base
        cpu.set_table_register(IDTR, base + MONITOR_IDT, 0x7FF)
        cpu.set_segment_register(TR, MON_TSS, base + MONITOR_TSS, 0x67, unicorn_flags(decode_descriptor(
            encode_segment(0, 0x67, 0x8B, 0x0))))
        # Its back link names itself, which has no descriptor: a guest iret with NT set, which
        # the CPU would make a task return through this TSS, is #TS(MON_TSS) (_nested_return).
        self._monitor_write(base + MONITOR_TSS, struct.pack("<H", MON_TSS))
        self.enter_guest(CpuFrame(cpu.read(EIP), cpu.read(CS), cpu.read(EFLAGS), cpu.read(ESP),
                                  cpu.read(SS)), 0)

    # -- shadow descriptor tables -----------------------------------------------------------
    def guest_descriptor(self, selector: int) -> Descriptor:
        """A descriptor the guest names, from its GDT or (TI set) the LDT its LDTR caches."""
        v = self.vcpu
        if selector & 4:
            if not v.ldtr & 0xFFFC:
                raise DeliveryFault(GP, selector & 0xFFFC, f"selector {selector:#x} names the LDT, and none is loaded")
            return table_descriptor(self.read_linear, v.ldt_base, v.ldt_limit, selector)
        return table_descriptor(self.read_linear, v.gdt_base, v.gdt_limit, selector)

    def rebuild_shadow_gdt(self) -> None:
        """Copy the guest GDT into both shadow views, checking every entry (see the header)."""
        v = self.vcpu
        count = min((v.gdt_limit + 1) // 8, GUEST_ENTRIES)
        try:
            raw = self.read_linear(v.gdt_base, count * 8) if count else b""
        except (GuestFault, BusError):
            raw = b""                 # a GDT outside RAM: every selector load faults, as it would
        if raw != self._shadow_source:
            entries = [e for (e,) in struct.iter_unpack("<Q", raw)]
            stale = max(0, self._shadow_entries - len(entries))
            for base, kernel in ((self.kernel_gdt, True), (self.user_gdt, False)):
                table = struct.pack(f"<{len(entries)}Q", *(shadow_descriptor(e, kernel) for e in entries))
                self._monitor_write(base, table + bytes(8 * stale))
            self._shadow_entries = len(entries)
            self._shadow_source = raw
        self._protect_gdt(count)
        self._select_gdt_view()

    def _protect_gdt(self, count: int) -> None:
        """Write-protect the frames of the guest's GDT, so every edit reaches the shadow (the
        frames its linear pages map to, through the guest's page tables when paging is on)."""
        v = self.vcpu
        frames = self._table_frames(v.gdt_base, count * 8)
        self.pc.protect_frames(frames - self._gdt_frames - self._ldt_frames, True)
        self.pc.protect_frames(self._gdt_frames - frames - self._ldt_frames, False)
        self._gdt_frames = frames

    def _frame_of(self, linear: int) -> int | None:
        """The guest frame a linear page maps to (no accessed bit set: the monitor only looks)."""
        if not self.vcpu.cr0 & CR0_PG:
            return (linear & 0xFFFFFFFF) >> 12
        try:
            return translate(self.pc.memory, self.paging(), linear, set_ad=False) >> 12
        except (GuestFault, BusError):
            return None

    def _gdt_written(self, address: int, size: int) -> bool:
        """Memory changed at ``address``: if it was the GDT, resync the shadow."""
        v = self.vcpu
        if not (address + size > v.gdt_base and address <= v.gdt_base + v.gdt_limit):
            return False
        first = max(0, (address - v.gdt_base) // 8)
        last = min(self._shadow_entries, (address + size - 1 - v.gdt_base) // 8 + 1)
        if self._shadow_source is None or first >= last:
            self.rebuild_shadow_gdt()
            return True
        try:
            raw = self.read_linear(v.gdt_base + first * 8, (last - first) * 8)
        except (GuestFault, BusError):
            self.rebuild_shadow_gdt()
            return True
        entries = [e for (e,) in struct.iter_unpack("<Q", raw)]
        for base, kernel in ((self.kernel_gdt, True), (self.user_gdt, False)):
            self._monitor_write(base + first * 8, struct.pack(f"<{len(entries)}Q",
                                                             *(shadow_descriptor(e, kernel) for e in entries)))
        source = self._shadow_source
        self._shadow_source = source[:first * 8] + raw + source[last * 8:]
        return True

    def _monitor_write(self, address: int, data: bytes) -> None:
        offset = address - self.monitor_base
        self.monitor_memory[offset:offset + len(data)] = data

    def _monitor_read(self, address: int, size: int) -> None:
        """A read of the monitor's pages that the read guard did not let through.

        The CPU reads them itself to load a segment (the shadow GDT); ``read_guard`` lets the
        monitor's own loads and the guest's iret/retf descriptor reads through. What reaches
        here is a guest instruction's operand, or the descriptor fetch of a guest's own
        segment-loading instruction: the run ends for the first, as an access outside RAM
        ends it under native. (The hook cannot change the value read, but the
        guest never runs another instruction.)

        Which instruction read? Unicorn sets EIP exactly before every load the translated
        code makes, but not before the reads QEMU's helpers make (a descriptor fetch), so
        there EIP may still be at an earlier instruction of the same translated block. So
        the instructions from EIP to the end of the running block are the candidates
        (just the one at EIP where every instruction is counted, and EIP is always exact):
        the read is a descriptor fetch only if one of them loads descriptors and none has
        a memory operand that covers the address.
        """
        eip = self.cpu.read(EIP)
        candidates = self._candidates(eip)
        if self.kernel_gdt <= address < self.user_ldt + GDT_LIMIT + 1 and \
                self._descriptor_read(candidates, address, size):
            return
        self.pc.request_stop(f"guest crash: the guest read the monitor's memory at {address:#010x} "
                             f"(EIP {eip:#010x}); outside guest RAM, as under native, the run ends")

    def _monitor_read_failed(self, error: Exception) -> None:
        self.crash(f"hvsim internal error: {type(error).__name__}: {error}")
        self.cpu.stop()

    def _candidates(self, eip: int) -> list[Instruction]:
        """The instructions that may be making a read reported at ``eip`` (see _monitor_read)."""
        block = self.cpu.running_block()
        if block is None or not block[0] <= eip < block[0] + block[1]:
            insn = self.fetch(eip)
            return [insn] if insn is not None else []
        found, at, end = [], eip, block[0] + block[1]
        while at < end:
            insn = self.fetch(at)
            if insn is None:
                break
            found.append(insn)
            at += insn.size
        return found

    def _descriptor_read(self, candidates: list[Instruction], address: int, size: int) -> bool:
        """Is this read the CPU fetching a descriptor for one of ``candidates``?"""
        if not any(loads_descriptors(insn) for insn in candidates):
            return False
        stack = (self.cpu.segment_register(SS)[1] + self.cpu.read(ESP)) & 0xFFFFFFFF
        for insn in candidates:         # an instruction's own operands are data, not descriptors
            ranges = [(self.effective_address(op), max(op.size, 1)) for op in insn.operands if isinstance(op, Mem)]
            popped = STACK_READS.get(insn.mnemonic)
            if popped is not None:      # what it pops off the stack (retf n: and the n bytes released)
                ranges.append((stack, popped + sum(op.value for op in insn.operands if isinstance(op, Imm))))
            for start, length in ranges:
                if address < start + length and address + size > start:
                    return False
        return True

    def _guest_wrote_monitor(self, address: int, size: int) -> None:
        self.record(ExitReason.TABLE_WRITE, self.cpu.read(EIP), "drop",
                    f"the guest wrote the monitor's memory at {address:#010x}; the write is dropped, as a "
                    f"write to an unassigned address is on the bare machine")

    def _guest_wrote_protected(self, address: int, size: int) -> None:
        self._dispatch_in_hook(Exit(ExitReason.TABLE_WRITE, self.cpu.read(EIP), address=address, length=size))

    def handle_table_write(self, exit: Exit) -> None:
        """The CPU wrote a write-protected frame (the write has landed): the shadow follows.
        ``exit.address`` is guest-physical: with paging on, the GDT is compared whole."""
        ldt = self._ldt_source
        self.rebuild_shadow_ldt()
        if ldt != self._ldt_source:
            self.record(ExitReason.TABLE_WRITE, exit.eip, "ldt-write",
                        "the guest wrote its LDT, which the monitor write-protects; the shadow LDT follows")
        if self.vcpu.cr0 & CR0_PG:
            source = self._shadow_source
            self.rebuild_shadow_gdt()
            if source != self._shadow_source:
                self.record(ExitReason.TABLE_WRITE, exit.eip, "gdt-write",
                            "the guest wrote its GDT, which the monitor write-protects; the shadow GDT follows")
            return
        if self._gdt_written(exit.address, exit.length):
            self.record(ExitReason.TABLE_WRITE, exit.eip, "gdt-write",
                        "the guest wrote its GDT, which the monitor write-protects; the shadow GDT follows")

    def _select_gdt_view(self) -> None:
        kernel = self.vcpu.cpl == 0
        self.cpu.set_table_register(GDTR, self.kernel_gdt if kernel else self.user_gdt, GDT_LIMIT)
        v = self.vcpu
        if v.ldtr & 0xFFFC:
            self.cpu.set_segment_register(LDTR, v.ldtr, self.kernel_ldt if kernel else self.user_ldt,
                                          v.ldt_limit, _LDT_FLAGS)
        else:
            self.cpu.set_segment_register(LDTR, v.ldtr, 0, 0, 0)

    # -- the shadow LDT ----------------------------------------------------------------------
    def load_ldt(self, selector: int, d: Descriptor | None) -> None:
        """lldt: the virtual LDTR caches the descriptor (a later GDT edit does not move the LDT,
        as on the CPU), and the real LDTR points at the monitor's checked copy of it."""
        v = self.vcpu
        v.ldtr = selector
        v.ldt_base, v.ldt_limit = (d.base, d.limit) if d is not None else (0, 0)
        self.rebuild_shadow_ldt()

    def rebuild_shadow_ldt(self) -> None:
        """Copy the guest LDT into both shadow views, as the GDT (``shadow_descriptor``), and
        write-protect its frames so that every later edit reaches the copy."""
        v = self.vcpu
        count = min((v.ldt_limit + 1) // 8, GUEST_ENTRIES) if v.ldtr & 0xFFFC else 0
        try:
            raw = self.read_linear(v.ldt_base, count * 8) if count else b""
        except (GuestFault, BusError):
            raw = b""                 # an LDT outside RAM: every load through it faults, as it would
        if raw != self._ldt_source:
            entries = [e for (e,) in struct.iter_unpack("<Q", raw)]
            for base, kernel in ((self.kernel_ldt, True), (self.user_ldt, False)):
                table = struct.pack(f"<{len(entries)}Q", *(shadow_descriptor(e, kernel) for e in entries))
                self._monitor_write(base, table + bytes(max(0, len(self._ldt_source) - len(table))))
            self._ldt_source = raw
        frames = self._table_frames(v.ldt_base, count * 8)
        self.pc.protect_frames(frames - self._ldt_frames - self._gdt_frames, True)
        self.pc.protect_frames(self._ldt_frames - frames - self._gdt_frames, False)
        self._ldt_frames = frames
        self._select_gdt_view()

    def _table_frames(self, base: int, size: int) -> set[int]:
        """The guest frames a descriptor table's linear range maps to (through the guest's
        page tables when paging is on), those in RAM."""
        if not size:
            return set()
        first, last = base >> 12, (base + size - 1) >> 12
        return {f for f in (self._frame_of(page << 12) for page in range(first, last + 1))
                if f is not None and self.pc.memory.contains(f << 12)}

    def load_task_register(self, selector: int) -> None:
        if selector & 0xFFFC == 0:
            raise GuestFault(GP, 0, why="ltr with a null selector")
        d = self.gdt_descriptor(selector)
        if not d.system or d.type != TSS32_AVAILABLE:
            raise GuestFault(GP, selector & 0xFFFC, why=f"ltr {selector:#x}: not an available 32-bit TSS")
        if not d.present:
            raise GuestFault(NP, selector & 0xFFFC, why=f"ltr {selector:#x}: TSS not present")
        # The CPU marks the TSS busy in the guest's GDT, as ltr does.
        addr = self.vcpu.gdt_base + (selector & 0xFFF8)
        self.write_linear(addr + 5, bytes([self.read_linear(addr + 5, 1)[0] | 0x2]))
        self.vcpu.tr, self.vcpu.tr_base, self.vcpu.tr_limit = selector, d.base, d.limit
        self.rebuild_shadow_gdt()

    def segment_descriptor(self, selector: int) -> Descriptor:
        """A segment descriptor the guest names, from the GDT or the LDT, with the CPU's limit check."""
        try:
            return self.guest_descriptor(selector)
        except DeliveryFault as e:
            raise GuestFault(e.vector, e.error_code, why=e.why) from None

    def gdt_descriptor(self, selector: int) -> Descriptor:
        """A GDT descriptor the guest names, with the CPU's limit and LDT checks."""
        if selector & 4:
            raise GuestFault(GP, selector & 0xFFFC, why="an LDT selector where the GDT is required")
        try:
            return table_descriptor(self.read_linear, self.vcpu.gdt_base, self.vcpu.gdt_limit, selector)
        except DeliveryFault as e:
            raise GuestFault(e.vector, e.error_code, why=e.why) from None

    def load_stack_segment(self, selector: int) -> None:
        cpl = self.vcpu.cpl
        if selector & 0xFFFC == 0:
            raise GuestFault(GP, 0, why="mov ss with a null selector")
        d = self.segment_descriptor(selector)
        if selector & 3 != cpl or d.dpl != cpl or not d.is_writable_data:
            raise GuestFault(GP, selector & 0xFFFC, why=f"mov ss, {selector:#x} at CPL {cpl}")
        if not d.present:
            raise GuestFault(SS_FAULT, selector & 0xFFFC, why=f"mov ss, {selector:#x}: not present")
        self._guard.open = 1
        try:
            loaded = self.cpu.try_write(SS, (selector & ~3) | REAL_RING[cpl])
        finally:
            self._guard.open = 0
        if not loaded:
            raise GuestFault(GP, selector & 0xFFFC, why=f"mov ss, {selector:#x}: refused by the shadow")
        self.vcpu.shadow_from = self.instructions_now()

    # -- virtual <-> real -------------------------------------------------------------------
    def _virtual_selector(self, real: int) -> int:
        """A real selector as the guest loaded it: ring 1 shows as the virtual ring."""
        rpl = real & 3
        if rpl == 1:
            rpl = self.vcpu.cpl if self.vcpu.cpl <= 1 else 1
        return (real & ~3) | rpl

    def sync_cpl(self) -> None:
        """Rings 2 and 3 are real; a change among them happens without the monitor."""
        real = self.cpu.cpl
        if real >= 2:
            self.vcpu.cpl = real

    def interrupts_enabled(self) -> bool:
        return self.vcpu.iflag

    def interrupt_shadow(self) -> bool:
        v = self.vcpu
        if v.shadow_from is None:
            return self.cpu.interrupt_shadow()    # a mov ss the CPU ran itself, at ring 1 or 3
        if self.instructions_now() > v.shadow_from:
            v.shadow_from = None
            return False
        return True

    def interrupt_flag_set(self) -> None:
        # sti's shadow: the interrupt is taken after the *next* instruction, so that
        # `sti; hlt` wakes from the hlt rather than before it.
        self.vcpu.shadow_from = self.instructions_now()
        if self._interrupt_pending():
            self.stop_slice(Exit(ExitReason.INTERRUPT_WINDOW, self.cpu.read(EIP)))

    def io_permitted(self) -> bool:
        v = self.vcpu
        if v.iopl == 3:
            return True
        self.sync_cpl()
        return v.cpl <= v.iopl

    def invalidate_page(self, linear: int) -> None:
        """invlpg: the page's shadow entry goes, and the TLB (which Unicorn flushes only whole)."""
        if self.mmu is not None:
            self.mmu.invalidate(linear)

    def details(self) -> dict:
        """``--json``: what the cached shadow page tables did."""
        return {"shadow": self.mmu.stats()} if self.mmu is not None else {}

    def after_slice(self, ran: int) -> None:
        """Count the slice's hidden faults (``ShadowPaging.hidden_faults``): the fills the shadow
        could not serve, each fixed by a walk of the guest's tables in the fill."""
        if self.mmu is not None:
            faults = self.mmu.hidden_faults
            if faults != self._walks:
                self.stats.add(ExitReason.SHADOW_PAGE_FAULT, faults - self._walks)
                self._walks = faults

    def paging(self) -> Paging:
        """The virtual CR0, CR3 and CR4: how the guest's linear addresses translate."""
        v = self.vcpu
        return Paging(v.cr0, v.cr3, v.cr4)

    def read_linear(self, address: int, length: int) -> bytes:
        if self.vcpu.cr0 & CR0_PG:
            return self.space.read(address & 0xFFFFFFFF, length)
        return self.pc.memory.read(address & 0xFFFFFFFF, length)

    def write_linear(self, address: int, data: bytes) -> None:
        if self.vcpu.cr0 & CR0_PG:
            self.space.write(address & 0xFFFFFFFF, data)
        else:
            self.pc.memory.write(address & 0xFFFFFFFF, data)
        self._gdt_written(address & 0xFFFFFFFF, len(data))

    def read_register(self, name: str) -> int:
        return self.cpu.read_named(name) & 0xFFFFFFFF

    def write_register(self, name: str, value: int) -> None:
        self.cpu.write(GPR_BY_NAME[name], value & 0xFFFFFFFF)

    def set_fault_address(self, cr2: int) -> None:
        self.vcpu.cr2 = cr2

    def current_frame(self, eip: int) -> CpuFrame:
        cpu, v = self.cpu, self.vcpu
        eflags = cpu.read(EFLAGS) & ~(EFLAGS_IF | EFLAGS_IOPL)
        eflags |= (EFLAGS_IF if v.iflag else 0) | (v.iopl << 12)
        return CpuFrame(eip, self._virtual_selector(cpu.read(CS)), eflags, cpu.read(ESP),
                        self._virtual_selector(cpu.read(SS)))

    def delivery_view(self) -> VirtualView:
        self.sync_cpl()
        return VirtualView(self)

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        self.enter_guest(frame, handler_cpl)

    def enter_guest(self, frame: CpuFrame, virtual_cpl: int) -> None:
        """Resume the guest at a virtual frame, at its real ring.

        The CPU is loaded directly, in one batch, as the hardware's own far transfer loads
        it (``Cpu.load_ring``: the CPL first, then SS, CS, ESP, EFLAGS, EIP): inward or at the
        same ring the data segments keep their caches, as on real delivery; outward (the
        kernel's iret or retf to user code) the segments the new ring may not use are nulled,
        as iret does. On the first entry, from real ring 0, the data segments are loaded again
        at the guest's ring, so that their caches come from the shadow GDT.
        """
        cpu, v = self.cpu, self.vcpu
        eflags = frame.eflags
        if eflags & EFLAGS_VM:
            self.crash(f"a return to virtual-8086 mode (EFLAGS {eflags:#x}); trap-and-emulate does not model "
                       f"virtual-8086 mode")
            return
        view_changes = (v.cpl == 0) != (virtual_cpl == 0)
        v.iopl = (eflags & EFLAGS_IOPL) >> 12
        v.cpl = virtual_cpl
        v.iflag = bool(eflags & EFLAGS_IF)
        rpl = REAL_RING[virtual_cpl]
        real_flags = (eflags & ~EFLAGS_IOPL) | EFLAGS_IF
        cpu.clear_interrupt_shadow()
        here = cpu.cpl
        if view_changes or not here:
            self._select_gdt_view()
        guard = self._guard
        guard.open = 1
        try:
            data = cpu.read_batch(_DATA_SEGMENTS) if not here else None
            if not cpu.load_ring(rpl, (frame.cs & ~3) | rpl, (frame.ss & ~3) | rpl, frame.esp, real_flags,
                                 frame.eip):
                self.crash(f"cannot enter the guest at {frame.cs:#x}:{frame.eip:#010x} with stack "
                           f"{frame.ss:#x}:{frame.esp:#010x}: the shadow GDT refuses them")
                return
            if data is not None:
                if not cpu.write_batch(_DATA_SEGMENTS, data):
                    for reg, selector in zip(_DATA_SEGMENTS, data):
                        if not cpu.try_write(reg, selector):
                            cpu.write(reg, 0)
            elif rpl > here:
                cpu.drop_segments_above(rpl)
        finally:
            guard.open = 0
        ring = _refused_from(virtual_cpl, v.iopl)
        if ring != self._io_rule:
            self._io_rule = ring
            cpu.refuse_port_io_from_cpl(ring)

    # -- traps -------------------------------------------------------------------------------
    def fast_event(self, intno: int, eip: int) -> bool:
        """An ``int n`` or a fault other than #GP/#NP (which may be instructions to emulate),
        reflected in one pass through the guest's own tables (``deliver_flat``), as
        ``handle_exception`` would reflect it; anything unusual takes the general path."""
        if self.trace.enabled or intno == TS_VECTOR:     # (#TS may be a nested task's iret: _nested_return)
            return False
        if self.vcpu.cr0 & CR0_PG:
            if self.space.fast is None:
                return False
            memory = self._paged        # the guest's tables through its page tables, a walk per page
            memory.begin(self.paging())
            write = self._paged_write
        else:
            memory, write = self.pc.memory, self.write_linear
        if intno == GP or intno == NP:
            return self._fast_emulate(intno, eip, memory)
        cpu, v = self.cpu, self.vcpu
        cs, eflags, esp, ss = cpu.read_batch(_EVENT_REGISTERS)
        try:
            software = software_interrupt_length(intno, memory.read((eip - 2) & 0xFFFFFFFF, 2)) > 0
        except IndexError:
            return False
        self.sync_cpl()
        error = None if software else self.error_code_for(intno)
        eflags = (eflags & ~(EFLAGS_IF | EFLAGS_IOPL)) | (EFLAGS_IF if v.iflag else 0) | (v.iopl << 12)
        done = deliver_flat(memory, write, intno, software, error, v.cpl, v.idt_base, v.idt_limit,
                            v.gdt_base, v.gdt_limit, self._tss_base, eip, self._virtual_selector(cs), eflags,
                            esp, self._virtual_selector(ss))
        if done is None:
            return False
        if not software:
            cpu.forget_fault()
        self.state = VcpuState.RUNNING
        self.stats.add(ExitReason.EXCEPTION_NMI)
        new_eip, new_cs, new_eflags, new_esp, new_ss, handler_cpl = done
        self.enter_guest(CpuFrame(new_eip, new_cs, new_eflags, new_esp, new_ss), handler_cpl)
        return True

    def _tss_base(self) -> int:
        return self.vcpu.tr_base

    def _paged_write(self, address: int, data: bytes) -> None:
        """A frame pushed by the one-pass delivery with paging on (it may land on the GDT)."""
        self._paged.write(address, data)
        self._gdt_written(address & 0xFFFFFFFF, len(data))

    def _fast_emulate(self, intno: int, eip: int, memory) -> bool:
        """A #GP or #NP: the instruction emulated straight from the hook, as
        ``handle_exception`` would emulate it (False: not one the monitor emulates)."""
        cpu = self.cpu
        try:                            # the two bytes before EIP and the instruction, in one read
            window = memory.read((eip - 2) & 0xFFFFFFFF, MAX_INSN + 2)
        except IndexError:
            return False
        insn = decode(window[2:], eip)
        if insn is None or software_interrupt_length(intno, window[:2]):
            return False
        self.sync_cpl()
        if insn.mnemonic in _IRETS and self.vcpu.cpl == 0:
            cpu.forget_fault()          # the kernel's iret, the commonest: as _emulate runs it
            self.guarded(eip, self.iret, insn)
            return True
        exit = Exit(ExitReason.EXCEPTION_NMI, eip, 0, intno, self.error_code_for(intno))
        cpu.forget_fault()
        return self.run_handler(lambda exit: self._emulate(exit, insn), exit) is not False

    def handle_exception(self, exit: Exit) -> None:
        self.sync_cpl()
        if exit.vector in (GP, NP) and not exit.software and self._emulate(exit):
            return
        if not exit.software and self._nested_return(exit):
            return
        if exit.vector == NP and not exit.software:
            self._hidden_segment_fault(exit)
        super().handle_exception(exit)

    def _emulate(self, exit: Exit, insn: Instruction | None = None) -> bool:
        """Emulate the instruction that trapped, if it is one the monitor virtualises."""
        insn = insn or self.fetch(exit.eip)
        if insn is None:
            return False
        handler = EMULATORS.get(insn.mnemonic)
        if handler is None:
            if insn.mnemonic in ("ljmp", "lcall", "jmp", "call") and self._far_to_system(insn, exit):
                return True
            return False
        if exit.vector == NP and insn.mnemonic not in ("iret", "iretd", "retf"):
            return False
        try:
            reason, why = handler(self, insn)
        except Unemulated:
            return False
        if insn.mnemonic in TRANSFERS:
            return True                 # iret records its own exit, with the ring it returns to
        self.record(reason, exit.eip, insn.mnemonic, why, insn)
        self.cpu.write(EIP, (exit.eip + insn.size) & 0xFFFFFFFF)
        if insn.mnemonic == "hlt":
            self.halt()
        return True

    def _hidden_segment_fault(self, exit: Exit) -> None:
        """A #NP on a descriptor the shadow hid (a ring change or a system descriptor)."""
        selector = exit.error_code or 0
        try:
            d = self.guest_descriptor(selector)
        except DeliveryFault:
            return
        if d.present and not d.system:
            # Hidden only so that the monitor sees the ring change: the bare machine
            # refuses a jump into a more privileged ring with #GP(selector).
            raise GuestFault(GP, selector & 0xFFFC, why="a transfer to another ring's code")

    def _far_to_system(self, insn: Instruction, exit: Exit) -> bool:
        """A far jmp/call whose selector names a call gate or TSS in the guest's GDT.

        The shadow never shows the CPU a gate (it would lead to real ring 0), so the
        monitor performs the transfer on the virtual CPU, with the machine's one routine.
        """
        selector = self._loaded_selector(insn)
        if selector is None or selector & 4:
            return False
        try:
            d = self.guest_descriptor(selector)
        except DeliveryFault:
            return False
        if not d.system:
            return False
        if d.type in TASK_SWITCH_TYPES:
            source = "call" if insn.mnemonic in ("lcall", "call") else "jmp"
            self._task_switch(insn, exit, selector, source)
            return True
        if d.type == CALL_GATE16:
            self.crash(f"{insn.text} at {exit.eip:#010x} is a 16-bit call gate through selector {selector:#x}; "
                       f"trap-and-emulate does not model 16-bit gates")
            return True
        if d.type != CALL_GATE32:
            raise GuestFault(GP, selector & 0xFFFC, why=f"{insn.text}: selector {selector:#x} is no gate or TSS")
        call = insn.mnemonic in ("lcall", "call")
        at = self.current_frame((exit.eip + insn.size) & 0xFFFFFFFF)
        try:
            done = through_call_gate(self.delivery_view(), selector, at, call)
        except DeliveryFault as e:
            raise GuestFault(e.vector, e.error_code, why=e.why) from None
        self.record(ExitReason.CALLOUT, exit.eip, "call-gate",
                    f"{insn.text} through a call gate: the shadow GDT hides gates (they lead to real ring 0), "
                    f"so the monitor performs the transfer to virtual ring {done.handler_cpl}", insn)
        self.enter_guest(done.frame, done.handler_cpl)
        return True

    def _task_switch(self, insn: Instruction, exit: Exit, selector: int, source: str) -> None:
        """A far jmp or call to a TSS or task gate, or an iret with NT set: the shadow shows the
        CPU no TSS (and the real TR is the monitor's), so the monitor switches the *virtual*
        task, with the machine's one switch (``VirtualTaskCpu``)."""
        if not self.switch_tasks(selector, source, exit.eip, insn.size):
            return
        self.record(ExitReason.TASK_SWITCH, exit.eip, "task-switch",
                    f"{insn.text}: a hardware task switch, made by the monitor on the virtual TR, CR3 and "
                    f"selectors (the shadow GDT shows the CPU no TSS)", insn)

    def _nested_return(self, exit: Exit) -> bool:
        """An iret with NT set, which the CPU tried as a task return through the monitor's own TSS:
        its back link (MON_TSS) names no TSS, so the CPU raised #TS(MON_TSS). The guest's is the
        virtual task's return."""
        if exit.vector != TS_VECTOR or exit.error_code != MON_TSS:
            return False
        insn = self.fetch(exit.eip)
        if insn is None or insn.mnemonic not in _IRETS:
            return False
        self.cpu.forget_fault()
        self._task_switch(insn, exit, 0, "iret")
        return True

    # -- emulated transfers --------------------------------------------------------------------
    def iret(self, insn: Instruction) -> None:
        cpu, v = self.cpu, self.vcpu
        if v.cpl != 0:
            raise Unemulated("iret at a virtual ring above 0: the CPU's own fault stands")
        esp = cpu.esp
        ss_base = cpu.segment_register(SS)[1]
        read = self.read_linear          # (through the guest's page tables when paging is on)
        eip, cs, eflags = _IRET_FRAME.unpack(read((ss_base + esp) & 0xFFFFFFFF, 12))
        cs &= 0xFFFF
        target_cpl = cs & 3
        self._check_return_code(cs, target_cpl, "iret")
        if target_cpl > v.cpl:
            new_esp, ss = _OUTER_STACK.unpack(read((ss_base + esp + 12) & 0xFFFFFFFF, 8))
            ss &= 0xFFFF
            self._check_return_stack(ss, target_cpl, "iret")
        else:
            new_esp, ss = esp + 12, self._virtual_selector(cpu.read(SS))
        if self.trace.enabled:
            self.record(ExitReason.IRET, cpu.read(EIP), "iret",
                        f"iret in ring 1 faults on the guest's ring-{target_cpl} selector; the monitor pops "
                        f"the frame (virtual IF={int(bool(eflags & EFLAGS_IF))}) and resumes the guest", insn)
        else:
            self.stats.add(ExitReason.IRET)
        self.enter_guest(CpuFrame(eip, cs, eflags, new_esp & 0xFFFFFFFF, ss), target_cpl)
        cpu.nmi_blocked = False          # as the CPU's iret does: the next NMI may come
        if (v.iflag and self._interrupt_pending()) or self.pc.irqs.nmi_pending():
            self.stop_slice(Exit(ExitReason.INTERRUPT_WINDOW, eip))

    def _check_return_code(self, cs: int, target_cpl: int, what: str) -> None:
        """The checks an iret or retf makes of the code segment it returns to."""
        if cs & 0xFFFC == 0:
            raise GuestFault(GP, 0, why=f"{what} to a null code selector")
        code = self.segment_descriptor(cs)
        if not code.is_code or (code.dpl != target_cpl and not code.is_conforming) or code.dpl > target_cpl:
            raise GuestFault(GP, cs & 0xFFFC, why=f"{what} to {cs:#x}: not a ring-{target_cpl} code segment")
        if not code.present:
            raise GuestFault(NP, cs & 0xFFFC, why=f"{what} to {cs:#x}: not present")

    def _check_return_stack(self, ss: int, target_cpl: int, what: str) -> None:
        """The checks an iret or retf to an outer ring makes of the stack it returns to."""
        if ss & 0xFFFC == 0:
            raise GuestFault(GP, 0, why=f"{what} to an outer ring with a null SS")
        stack = self.segment_descriptor(ss)
        if ss & 3 != target_cpl or stack.dpl != target_cpl or not stack.is_writable_data:
            raise GuestFault(GP, ss & 0xFFFC, why=f"{what}: SS {ss:#x} is not a ring-{target_cpl} stack")
        if not stack.present:            # QEMU gives #NP here, where the SDM says #SS: QEMU is the referee
            raise GuestFault(NP, ss & 0xFFFC, why=f"{what}: SS {ss:#x} not present")

    def retf(self, insn: Instruction) -> None:
        """A far return from the kernel to an outer ring: the shadow hides that ring's code."""
        cpu, v = self.cpu, self.vcpu
        if v.cpl != 0:
            raise Unemulated("retf at a virtual ring above 0: the CPU's own fault stands")
        release = insn.operands[0].value if insn.operands else 0
        esp = cpu.read(ESP)
        ss_base = self.segment_base("ss")
        eip, cs = struct.unpack("<2I", self.read_linear(ss_base + esp, 8))
        cs &= 0xFFFF
        target_cpl = cs & 3
        if target_cpl <= v.cpl:
            raise Unemulated("retf within ring 0: the CPU's own fault stands")
        self._check_return_code(cs, target_cpl, "retf")
        new_esp, ss = struct.unpack("<2I", self.read_linear(ss_base + esp + 8 + release, 8))
        ss &= 0xFFFF
        self._check_return_stack(ss, target_cpl, "retf")
        self.record(ExitReason.IRET, cpu.read(EIP), "retf",
                    f"retf from ring 1 to the guest's ring-{target_cpl} code, which the kernel's shadow GDT "
                    f"hides; the monitor pops the frame and resumes the guest", insn)
        eflags = self.current_frame(0).eflags
        self.enter_guest(CpuFrame(eip, cs, eflags, (new_esp + release) & 0xFFFFFFFF, ss), target_cpl)

    def sysenter_transfer(self) -> None:
        v = self.vcpu
        cs = v.msrs[MSR_SYSENTER_CS] & 0xFFFC
        eflags = self.current_frame(0).eflags & ~((1 << 17) | EFLAGS_IF | (1 << 16))
        self.enter_guest(CpuFrame(v.msrs.get(MSR_SYSENTER_EIP, 0) & 0xFFFFFFFF, cs, eflags,
                                  v.msrs.get(MSR_SYSENTER_ESP, 0) & 0xFFFFFFFF, cs + 8), 0)

    def sysexit_transfer(self) -> None:
        cs = self.vcpu.msrs[MSR_SYSENTER_CS] & 0xFFFC
        frame = self.current_frame(0)
        self.enter_guest(CpuFrame(self.cpu.read(EDX) & 0xFFFFFFFF, (cs + 16) | 3, frame.eflags,
                                  self.cpu.read(ECX) & 0xFFFFFFFF, (cs + 24) | 3), 3)

    def sysenter(self, insn: Instruction, exit: Exit) -> None:
        """sysenter from the hook (Unicorn runs it as a no-op at any ring): emulated."""
        self.sync_cpl()
        reason, why = EMULATORS["sysenter"](self, insn)
        self.record(reason, exit.eip, "sysenter", why, insn)

    # -- the virtual CPU's notifications -------------------------------------------------------
    def gdt_loaded(self) -> None:
        self.rebuild_shadow_gdt()

    def control_register_written(self, n: int, old: int, value: int) -> None:
        v = self.vcpu
        if v.cr0 & CR0_PG:
            if not self.shadow:
                raise UnsupportedGuest(
                    f"the guest enabled paging (mov cr{n}, {value:#x}): trap-and-emulate shadows the guest's "
                    f"page tables in the C TLB fill, which was not built here; run it with --technique native")
            if v.cr4 & CR4_PAE:
                raise UnsupportedGuest(
                    f"the guest enabled PAE paging (mov cr{n}, {value:#x}): trap-and-emulate shadows 32-bit "
                    f"page tables only; run it with --technique native")
        if self.mmu is not None and n in (0, 3, 4) and self.mmu.load(self.paging(), cr3_loaded=n == 3):
            # The CPU flushed its TLB; the GDT and LDT may now live in other frames, which must
            # be the ones write-protected.
            self.rebuild_shadow_gdt()
            self.rebuild_shadow_ldt()
        owned = {0: (CR0, CR0_GUEST_OWNED), 4: (CR4, CR4_GUEST_OWNED)}.get(n)
        if owned is not None:
            reg, mask = owned
            real = self.cpu.read(reg)
            if (real ^ value) & mask:
                self.cpu.write(reg, (real & ~mask) | (value & mask))
