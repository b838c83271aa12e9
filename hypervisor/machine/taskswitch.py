"""Hardware task switching, for an event delivered through a task gate (SDM Vol. 3, 7.3 and 6.12.2).

A far jmp or call to a TSS or through a task gate, and an iret with EFLAGS.NT set, are
instructions: Unicorn runs them itself, in QEMU's ``switch_tss``. An exception or interrupt
whose IDT entry is a task gate never gets there, because Unicorn never delivers events
(UNICORN.md). So the task switch an event makes is this file's, and it must leave the CPU
exactly as Unicorn's own switch would, because that switch takes over when the new task
leaves: its iret (NT is set) reads the back link from TR's cache and frees the busy TSS; a
later jmp or call saves into whatever TSS TR's cache names.

The referee is QEMU 7.2's ``switch_tss_ra`` called as ``SWITCH_TSS_CALL`` from
``do_interrupt_protected`` (Unicorn's copy, from QEMU 5.0, is the same code), step by step:

1. The gate's TSS descriptor: TI set is #TS, past the GDT limit, not a system descriptor or
   not an *available* TSS is #GP, not present #NP, a limit below 0x67 #TS; each with the
   TSS selector as error code.
2. The new TSS's CR3, EIP, EFLAGS, eight registers, six selectors and LDT selector are read.
3. The current TSS (TR's cache) is touched at its first and last byte, then the outgoing task
   is saved in it: EIP (where the event returns to), EFLAGS, the eight registers and the six
   selectors (16-bit stores: the upper words of those fields are left alone). Not CR3 and not
   the LDT selector: the CPU never writes those.
4. The new TSS gets the back link (the old TR selector) and its descriptor the busy bit. The
   old TSS stays busy and NT is set in the new EFLAGS: the new task is *nested*.
5. The new state: CR0.TS, TR (cached available, as QEMU caches it), CR3 (with paging on),
   EIP, EFLAGS, the registers, the LDT, then the six segments with the checks of
   ``tss_load_seg``, then EIP against CS's limit. A fault here belongs to the new task: it
   is raised with the new task loaded (``NewTaskFault``).
6. For an exception with an error code, the code is pushed on the new task's stack.

Up to step 4 every fault leaves the registers of the old task in place (memory written so far
stays written, as on QEMU). Every access is a supervisor one through the view's accessors,
which walk the guest's page tables; after CR3 changes the view reads through the new ones.

Where this departs from QEMU, each ending the run with ``UnmodelledTaskSwitch`` (the refusal of
DESIGN.md's command-line contract: one line naming the problem, exit status 2) unless said:
a 16-bit TSS; a new task in virtual-8086 mode; a fault in step 5 on the LDT, CS or SS (QEMU
goes on with half-loaded segment caches that Unicorn cannot be given); a data segment that
fails its check in step 5 is loaded null with the ones after it, where QEMU keeps their
selectors with empty caches (the fault itself is QEMU's); segments loaded here get their
accessed bit set (Unicorn's segment load sets it; QEMU's task switch does not); and DR7's
local breakpoints are not cleared.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import UnsupportedGuest
from .cpu import (CR0, CR3, CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, EFLAGS, EIP, ES, ESI, ESP, FS, GDTR, GS, LDTR,
                  SS, TR, Cpu)
from .descriptors import Descriptor, decode_descriptor
from .faults import GP_VECTOR, GuestFault

# The vectors a task switch raises besides #GP (interrupts.py names them all; it imports this file).
TS_VECTOR, NP_VECTOR = 10, 11

# A 32-bit TSS (SDM Figure 7-2): the fields a switch reads and writes.
TSS_LINK, TSS_CR3, TSS_EIP, TSS_SEGMENTS = 0x00, 0x1C, 0x20, 0x48
TSS32_MIN_LIMIT = 0x67
_IMAGE = struct.Struct("<11I6IH")        # CR3, EIP, EFLAGS, EAX .. EDI, six selector dwords, LDT: 0x1C-0x61
_SAVED = struct.Struct("<10I")          # EIP, EFLAGS, EAX .. EDI at 0x20
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
DESC_BUSY = 1 << 9                      # in a TSS descriptor's high dword
LDT_TYPE = 0x2

CR0_TS, CR0_PG = 1 << 3, 1 << 31
EFLAGS_NT, EFLAGS_VM = 1 << 14, 1 << 17
DESC_B = 1 << 22                        # in a segment cache's flags: a 32-bit stack
# What a switch takes from the new task's EFLAGS: QEMU's mask (TF, IF, IOPL, NT, RF, VM, AC, ID)
# and the arithmetic flags and DF, which QEMU keeps apart. The rest (VIF, VIP) stay as they were.
EFLAGS_LOADED = 0x100 | 0x200 | 0x3000 | EFLAGS_NT | 0x10000 | EFLAGS_VM | 0x40000 | 0x200000 | 0x8D5 | 0x400

_GPRS = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI)
_SEGMENTS = (ES, CS, SS, DS, FS, GS)    # the TSS's order, which is also QEMU's R_ES .. R_GS
_DATA = ((0, ES, "ES"), (3, DS, "DS"), (4, FS, "FS"), (5, GS, "GS"))   # index in the TSS, register; QEMU's order
_ENTRY = _GPRS + (EFLAGS, EIP)


class UnmodelledTaskSwitch(UnsupportedGuest):
    """A task switch this machine cannot make as QEMU does (see the header), or one through a
    view that cannot switch tasks (a technique that keeps TR virtual): the guest asks for what
    the machine cannot give it, so the run ends with the command line's one-line refusal."""


@runtime_checkable
class TaskSwitchView(Protocol):
    """What a task switch needs besides a delivery view's tables: the real CPU, whose whole
    state it replaces, and a way to tell the view that CR3 changed under it. The switch sets
    ``cpl`` to the new task's, so that a fault it raises is delivered from that ring."""
    cpl: int
    cpu: Cpu

    def read_linear(self, address: int, length: int) -> bytes: ...
    def write_linear(self, address: int, data: bytes) -> None: ...
    def address_space_changed(self) -> None: ...


@dataclass(frozen=True)
class TaskImage:
    """A task as its 32-bit TSS holds it: what the switch loads."""
    cr3: int
    eip: int
    eflags: int
    gprs: tuple[int, ...]        # EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI
    segments: tuple[int, ...]    # ES, CS, SS, DS, FS, GS
    ldt: int

    @classmethod
    def unpack(cls, raw: bytes) -> "TaskImage":
        """From the TSS's bytes 0x1C-0x61 (``_IMAGE``)."""
        words = _IMAGE.unpack(raw)
        return cls(words[0], words[1], words[2], words[3:11], tuple(s & 0xFFFF for s in words[11:17]), words[17])

    @property
    def esp(self) -> int:
        return self.gprs[4]


@dataclass(frozen=True)
class Entered:
    """Where the new task runs: what a delivery hands back as the handler's frame."""
    eip: int
    cs: int
    eflags: int
    esp: int
    ss: int
    cpl: int


class NewTaskFault(Exception):
    """The switch was made, then faulted: QEMU raises the fault with the new task loaded, so it
    is delivered from the new task (its EIP, its stack, its CPL)."""

    def __init__(self, fault: GuestFault, task: Entered):
        super().__init__(fault.why or str(fault))
        self.fault, self.task = fault, task


def enter_task(view: TaskSwitchView, selector: int, return_eip: int, error_code: int | None) -> Entered:
    """Switch to the task whose TSS ``selector`` names, as an event through a task gate does.

    ``return_eip`` is saved as the outgoing task's EIP (the faulting instruction, or the one
    after an ``int n``); ``error_code``, if not None, is pushed on the new task's stack. Raises
    ``GuestFault`` for a fault before the switch (the old task's), ``NewTaskFault`` for one
    after it.
    """
    cpu = view.cpu
    gdt_base, gdt_limit = cpu.table_register(GDTR)
    slot = gdt_base + (selector & 0xFFF8)
    tss = _incoming_tss(view, gdt_limit, slot, selector)
    task = TaskImage.unpack(view.read_linear(tss.base + TSS_CR3, _IMAGE.size))
    if task.eflags & EFLAGS_VM:
        raise UnmodelledTaskSwitch(f"the task of TSS {selector:#x} runs in virtual-8086 mode")
    old_selector, _, _, _ = cpu.segment_register(TR)
    eflags = cpu.read(EFLAGS)
    _save_outgoing(view, cpu, return_eip, eflags)
    view.write_linear(tss.base + TSS_LINK, _U16.pack(old_selector))
    high = _U32.unpack(view.read_linear(slot + 4, 4))[0]
    view.write_linear(slot + 4, _U32.pack(high | DESC_BUSY))
    _load_task(view, cpu, selector, tss, task, eflags)
    entered = _load_segments(view, cpu, gdt_base, gdt_limit, task)
    if error_code is None:
        return entered
    return _push_error_code(view, cpu, entered, error_code)


JMP, CALL, IRET = "jmp", "call", "iret"      # the instructions that switch tasks (QEMU's SWITCH_TSS_*)
TASK_GATE = 0x5


def _set_busy(view: TaskSwitchView, slot: int, busy: bool) -> None:
    high = _U32.unpack(view.read_linear(slot + 4, 4))[0]
    view.write_linear(slot + 4, _U32.pack(high | DESC_BUSY if busy else high & ~DESC_BUSY))


def is_task_target(view: TaskSwitchView, selector: int) -> bool:
    """Does a far jmp or call to ``selector`` switch tasks (a system descriptor of type TSS or
    task gate)? False where it cannot be read: the CPU then raises what it raises itself."""
    cpu = view.cpu
    if selector & 4:
        _, base, limit, _ = cpu.segment_register(LDTR)
    else:
        base, limit = cpu.table_register(GDTR)
    if selector & 0xFFFC == 0 or (selector & 0xFFF8) + 7 > limit:
        return False
    try:
        d = decode_descriptor(_U64.unpack(view.read_linear(base + (selector & 0xFFF8), 8))[0])
    except Exception:
        return False
    return d.system and d.type in (0x1, 0x9, TASK_GATE)


def switch_by_instruction(view: TaskSwitchView, selector: int, source: str, next_eip: int) -> Entered:
    """A task switch an instruction makes, as QEMU's helpers and ``switch_tss_ra`` make it: a
    far ``jmp`` or ``call`` to ``selector`` (a TSS, or a task gate in the GDT or LDT), or an
    ``iret`` with NT set (``selector`` is ignored: the back link in the current TSS names the
    task). ``next_eip`` is saved as the outgoing task's EIP. A jmp frees the old TSS and does
    not nest; a call nests (back link, NT); an iret frees the old TSS, saves its EFLAGS with NT
    clear and returns to a task that must be busy. Raises as ``enter_task``."""
    cpu = view.cpu
    gdt_base, gdt_limit = cpu.table_register(GDTR)
    if source == IRET:
        tr_base = cpu.segment_register(TR)[1]
        selector = _U16.unpack(view.read_linear(tr_base + TSS_LINK, 2))[0]
        error = selector & 0xFFFC
        if selector & 4 or (selector & 0xFFF8) + 7 > gdt_limit:
            raise GuestFault(TS_VECTOR, error, why=f"iret's back link {selector:#x} names no TSS")
        tss = decode_descriptor(_U64.unpack(view.read_linear(gdt_base + (selector & 0xFFF8), 8))[0])
        if not tss.system or tss.type & 7 != 3:
            raise GuestFault(TS_VECTOR, error, why=f"iret's back link {selector:#x} is not a busy TSS")
    else:
        selector, tss = _jump_target(view, cpu, gdt_base, gdt_limit, selector)
    error = selector & 0xFFFC
    if not tss.present:
        raise GuestFault(NP_VECTOR, error, why=f"TSS {selector:#x} is not present")
    if selector & 4:
        raise GuestFault(TS_VECTOR, error, why=f"TSS selector {selector:#x} is in the LDT")
    if not tss.type & 8:
        raise UnmodelledTaskSwitch(f"a {source} to the 16-bit TSS {selector:#x}")
    if tss.limit < TSS32_MIN_LIMIT:
        raise GuestFault(TS_VECTOR, error, why=f"TSS {selector:#x} has limit {tss.limit:#x}, below 0x67")
    task = TaskImage.unpack(view.read_linear(tss.base + TSS_CR3, _IMAGE.size))
    if task.eflags & EFLAGS_VM:
        raise UnmodelledTaskSwitch(f"the task of TSS {selector:#x} runs in virtual-8086 mode")
    old_selector = cpu.segment_register(TR)[0]
    eflags = cpu.read(EFLAGS)
    saved = eflags & ~EFLAGS_NT if source == IRET else eflags
    _save_outgoing(view, cpu, next_eip, saved, free_old=source != CALL)
    if source == CALL:
        view.write_linear(tss.base + TSS_LINK, _U16.pack(old_selector))
    if source != IRET:
        _set_busy(view, gdt_base + (selector & 0xFFF8), True)
    _load_task(view, cpu, selector, tss, task, eflags, nested=source == CALL)
    return _load_segments(view, cpu, gdt_base, gdt_limit, task)


def _jump_target(view: TaskSwitchView, cpu: Cpu, gdt_base: int, gdt_limit: int,
                 selector: int) -> tuple[int, Descriptor]:
    """The TSS a far jmp or call switches to, with the checks of QEMU's helpers: the target's
    DPL against CPL and RPL, and through a task gate the TSS it names (which must be available)."""
    error = selector & 0xFFFC
    if selector & 4:
        _, base, limit, _ = cpu.segment_register(LDTR)
    else:
        base, limit = gdt_base, gdt_limit
    if error == 0:
        raise GuestFault(GP_VECTOR, 0, why="a far transfer to the null selector")
    if (selector & 0xFFF8) + 7 > limit:
        raise GuestFault(GP_VECTOR, error, why=f"selector {selector:#x} is beyond its table's limit")
    d = decode_descriptor(_U64.unpack(view.read_linear(base + (selector & 0xFFF8), 8))[0])
    cpl = cpu.cpl
    if d.dpl < cpl or d.dpl < selector & 3:
        raise GuestFault(GP_VECTOR, error, why=f"{selector:#x} has DPL {d.dpl}, below CPL {cpl} or RPL")
    if d.type != TASK_GATE:
        return selector, d
    if not d.present:
        raise GuestFault(NP_VECTOR, error, why=f"the task gate {selector:#x} is not present")
    tss_selector = (d.raw >> 16) & 0xFFFF
    tss_error = tss_selector & 0xFFFC
    if tss_selector & 4:
        raise GuestFault(TS_VECTOR, tss_error, why=f"the task gate names {tss_selector:#x}, an LDT selector")
    if (tss_selector & 0xFFF8) + 7 > gdt_limit:
        raise GuestFault(GP_VECTOR, tss_error, why=f"TSS selector {tss_selector:#x} is beyond the GDT limit")
    tss = decode_descriptor(_U64.unpack(view.read_linear(gdt_base + (tss_selector & 0xFFF8), 8))[0])
    if not tss.system or tss.type & 7 != 1:
        raise GuestFault(GP_VECTOR, tss_error, why=f"selector {tss_selector:#x} is not an available TSS")
    return tss_selector, tss


def _incoming_tss(view: TaskSwitchView, gdt_limit: int, slot: int, selector: int) -> Descriptor:
    """The descriptor a task gate names, with QEMU's checks (step 1 of the header)."""
    error = selector & 0xFFFC
    if selector & 4:
        raise GuestFault(TS_VECTOR, error, why=f"the task gate names {selector:#x}, an LDT selector")
    if (selector & 0xFFF8) + 7 > gdt_limit:
        raise GuestFault(GP_VECTOR, error, why=f"TSS selector {selector:#x} is beyond the GDT limit {gdt_limit:#x}")
    tss = decode_descriptor(_U64.unpack(view.read_linear(slot, 8))[0])
    if not tss.system or tss.type & 7 != 1:
        raise GuestFault(GP_VECTOR, error, why=f"selector {selector:#x} is not an available TSS")
    if not tss.present:
        raise GuestFault(NP_VECTOR, error, why=f"TSS {selector:#x} is not present")
    if not tss.type & 8:
        if tss.limit < 0x2B:
            raise GuestFault(TS_VECTOR, error, why=f"16-bit TSS {selector:#x} has limit {tss.limit:#x}")
        raise UnmodelledTaskSwitch(f"a task gate to the 16-bit TSS {selector:#x}")
    if tss.limit < TSS32_MIN_LIMIT:
        raise GuestFault(TS_VECTOR, error, why=f"TSS {selector:#x} has limit {tss.limit:#x}, below 0x67")
    return tss


def _save_outgoing(view: TaskSwitchView, cpu: Cpu, return_eip: int, eflags: int, free_old: bool = False) -> None:
    """Step 3: the outgoing task into the TSS TR's cache names. QEMU first touches the TSS's
    first and last byte, reading then writing each, so that a fault comes before any store;
    its last byte is where the cached type says (0x2B for a 16-bit TSS, 0x67 for a 32-bit one).
    A jmp or an iret (``free_old``) then clears the old TSS's busy bit, before the save."""
    selector, base, _, flags = cpu.segment_register(TR)
    last = base + (TSS32_MIN_LIMIT if (flags >> 8) & 8 else 0x2B)
    first_byte, last_byte = view.read_linear(base, 1), view.read_linear(last, 1)
    view.write_linear(base, first_byte)
    view.write_linear(last, last_byte)
    if free_old:
        _set_busy(view, cpu.table_register(GDTR)[0] + (selector & 0xFFF8), False)
    view.write_linear(base + TSS_EIP, _SAVED.pack(return_eip, eflags, *cpu.read_batch(_GPRS)))
    for i, selector in enumerate(cpu.read_batch(_SEGMENTS)):
        view.write_linear(base + TSS_SEGMENTS + 4 * i, _U16.pack(selector))


def _load_task(view: TaskSwitchView, cpu: Cpu, selector: int, tss: Descriptor, task: TaskImage, eflags: int,
               nested: bool = True) -> None:
    """Step 5's first half, which cannot fault: CR0.TS, TR, CR3, the registers, EFLAGS, EIP
    (with NT set for a ``nested`` task: an event's or a call's)."""
    cr0 = cpu.read(CR0)
    cpu.write(CR0, cr0 | CR0_TS)
    cpu.set_segment_register(TR, selector, tss.base, tss.limit, _cached_flags(tss) & ~DESC_BUSY)
    if cr0 & CR0_PG:
        cpu.write(CR3, task.cr3)
        view.address_space_changed()
    loaded = (eflags & ~EFLAGS_LOADED) | (task.eflags & EFLAGS_LOADED) | (EFLAGS_NT if nested else 0) | 2
    cpu.write_batch(_ENTRY, (*task.gprs, loaded, task.eip))


def _load_segments(view: TaskSwitchView, cpu: Cpu, gdt_base: int, gdt_limit: int, task: TaskImage) -> Entered:
    """Step 5's second half: the LDT, then CS, SS, ES, DS, FS, GS, then EIP against CS's limit."""
    ldt = _load_ldt(view, cpu, gdt_base, gdt_limit, task.ldt)
    segments = task.segments
    cs, ss = segments[1], segments[2]
    cpl = cs & 3
    code = _checked(view, gdt_base, gdt_limit, ldt, cs, cpl, "CS")
    stack = _checked(view, gdt_base, gdt_limit, ldt, ss, cpl, "SS")
    if isinstance(code, GuestFault) or isinstance(stack, GuestFault):
        fault = code if isinstance(code, GuestFault) else stack
        raise UnmodelledTaskSwitch(f"the new task's {fault.why}: QEMU goes on with half-loaded segments")
    eflags = cpu.read(EFLAGS)
    if not cpu.load_ring(cpl, cs, ss, task.esp, eflags, task.eip):
        raise UnmodelledTaskSwitch(f"the CPU refused the new task's CS {cs:#x} or SS {ss:#x}")
    view.cpl = cpl
    entered = Entered(task.eip, cs, eflags, task.esp, ss, cpl)
    for n, (index, register, name) in enumerate(_DATA):
        checked = _checked(view, gdt_base, gdt_limit, ldt, segments[index], cpl, name)
        if isinstance(checked, GuestFault):
            for _, rest, _ in _DATA[n:]:
                cpu.write(rest, 0)
            raise NewTaskFault(checked, entered)
        if not cpu.try_write(register, segments[index]):
            raise UnmodelledTaskSwitch(f"the CPU refused the new task's selector {segments[index]:#x}")
    if task.eip > code.limit:
        raise NewTaskFault(GuestFault(GP_VECTOR, 0, why=f"the new task's EIP {task.eip:#x} is beyond CS's limit"),
                           entered)
    return entered


def _load_ldt(view: TaskSwitchView, cpu: Cpu, gdt_base: int, gdt_limit: int, selector: int) -> Descriptor | None:
    """The new task's LDT, loaded into LDTR (None: a null selector, an empty LDTR)."""
    cpu.set_segment_register(LDTR, selector & ~4 & 0xFFFF, 0, 0, 0)
    if selector & 0xFFFC == 0:
        return None
    error = selector & 0xFFFC
    if selector & 4 or (selector & 0xFFF8) + 7 > gdt_limit:
        raise UnmodelledTaskSwitch(f"the new task's LDT selector {selector:#x} is #TS({error:#x}) after the switch")
    try:
        ldt = decode_descriptor(_U64.unpack(view.read_linear(gdt_base + (selector & 0xFFF8), 8))[0])
    except GuestFault as fault:
        raise UnmodelledTaskSwitch(f"reading the new task's LDT descriptor faulted after the switch: {fault}") from None
    if not ldt.system or ldt.type != LDT_TYPE or not ldt.present:
        raise UnmodelledTaskSwitch(f"the new task's LDT selector {selector:#x} is #TS({error:#x}) after the switch")
    cpu.set_segment_register(LDTR, selector & ~4 & 0xFFFF, ldt.base, ldt.limit, _cached_flags(ldt))
    return ldt


def _cached_flags(d: Descriptor) -> int:
    """The flags QEMU's switch caches for TR and LDTR: the descriptor's whole high dword (P and
    the type are what anything reads; the rest is kept so that the cache is the one Unicorn's own
    switch would leave, to the bit)."""
    return d.raw >> 32


def _checked(view: TaskSwitchView, gdt_base: int, gdt_limit: int, ldt: Descriptor | None, selector: int,
             cpl: int, name: str) -> Descriptor | GuestFault | None:
    """The descriptor for one of the new task's segments, or the fault QEMU's ``tss_load_seg``
    raises for it (None: a null data selector, which loads as it is)."""
    error = selector & 0xFFFC
    if error == 0:
        if name in ("CS", "SS"):
            return GuestFault(TS_VECTOR, 0, why=f"{name} is null")
        return None
    if selector & 4:                    # the new LDT; an empty LDTR has limit 0
        base, limit = (ldt.base, ldt.limit) if ldt is not None else (0, 0)
    else:
        base, limit = gdt_base, gdt_limit
    if (selector & 0xFFF8) + 7 > limit:
        return GuestFault(TS_VECTOR, error, why=f"{name} {selector:#x} is beyond its table's limit")
    try:
        d = decode_descriptor(_U64.unpack(view.read_linear(base + (selector & 0xFFF8), 8))[0])
    except GuestFault as fault:
        return fault
    rpl = selector & 3
    if d.system:
        return GuestFault(TS_VECTOR, error, why=f"{name} {selector:#x} is a system descriptor")
    if name == "CS":
        usable = d.is_code and d.dpl == rpl
    elif name == "SS":
        usable = d.is_writable_data and d.dpl == cpl == rpl
    else:
        readable = not d.is_code or d.type & 2
        usable = readable and (d.is_conforming or (d.dpl >= cpl and d.dpl >= rpl))
    if not usable:
        return GuestFault(TS_VECTOR, error, why=f"{name} {selector:#x} is not usable at CPL {cpl}")
    if not d.present:
        return GuestFault(NP_VECTOR, error, why=f"{name} {selector:#x} is not present")
    return d


def _push_error_code(view: TaskSwitchView, cpu: Cpu, entered: Entered, error_code: int) -> Entered:
    """Step 6: the error code on the new task's stack (a 32-bit push: the TSS is 32-bit)."""
    _, ss_base, _, ss_flags = cpu.segment_register(SS)
    mask = 0xFFFFFFFF if ss_flags & DESC_B else 0xFFFF
    esp = (entered.esp - 4) & mask
    try:
        view.write_linear((ss_base + esp) & 0xFFFFFFFF, _U32.pack(error_code & 0xFFFFFFFF))
    except GuestFault as fault:
        raise NewTaskFault(fault, entered) from None
    esp = (entered.esp & ~mask) | esp
    cpu.write(ESP, esp)
    return Entered(entered.eip, entered.cs, entered.eflags, esp, entered.ss, entered.cpl)
