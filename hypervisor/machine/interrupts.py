"""Protected-mode interrupt and exception delivery, as the CPU does it (SDM Vol. 3, 6.12).

Unicorn reports every exception and ``int n`` to a hook and never consults the IDT,
so this module *is* the hardware's delivery microcode for every technique: read the
gate, check it, pick the stack (switching to SS0:ESP0 from the TSS when the handler
is more privileged), push the frame (and an error code for the vectors that have
one), clear IF for interrupt gates, and hand back where the CPU goes next.

It works on a *view* of the CPU: the native machine gives it the real tables; a
trap-and-emulate monitor gives it the guest's own (virtual) tables and virtual CPL,
and maps the answer onto the deprivileged real CPU itself. A fault while delivering
is raised as ``DeliveryFault``; ``deliver_with_escalation`` turns it into #DF, and a
fault while delivering #DF into a triple fault — the guest's crash, not ours.

A task gate in the IDT makes delivery a hardware task switch (taskswitch.py): the whole CPU
state is replaced, so it needs a view that owns the real CPU (``TaskSwitchView``); through any
other view the run ends with a refusal (``UnmodelledTaskSwitch``). A fault after the switch is
made belongs to the new task, and is delivered from there (``DeliveryFault.resume``).
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import Protocol

from .faults import GuestFault
from .descriptors import (CALL_GATE32, TSS_ESP0, TSS_SS0, TASK_GATE, Descriptor, Gate, decode_descriptor,
                          decode_gate)
from .taskswitch import NewTaskFault, TaskSwitchView, UnmodelledTaskSwitch, enter_task

DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS_FAULT, GP, PF, MF, AC = 10, 11, 12, 13, 14, 16, 17
VECTORS_WITH_ERROR_CODE = frozenset({DF, TS, NP, SS_FAULT, GP, PF, AC})
CONTRIBUTORY = frozenset({DE, TS, NP, SS_FAULT, GP})

EXCEPTION_NAMES = {
    DE: "#DE divide error", DB: "#DB debug", NMI: "NMI", BP: "#BP breakpoint", OF: "#OF overflow",
    BR: "#BR bound", UD: "#UD invalid opcode", NM: "#NM no FPU", DF: "#DF double fault",
    TS: "#TS invalid TSS", NP: "#NP segment not present", SS_FAULT: "#SS stack fault",
    GP: "#GP general protection", PF: "#PF page fault", MF: "#MF FPU error", AC: "#AC alignment",
}

EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17


class EventKind(enum.Enum):
    EXCEPTION = "exception"     # raised by the CPU: no DPL check, maybe an error code
    EXTERNAL = "external"       # from the PIC: no DPL check (QEMU 7.2 sets no EXT bit in error codes)
    SOFTWARE = "software"       # int n / int3 / into: gate DPL must be >= CPL


class DeliveryFault(Exception):
    """A fault met while delivering. ``resume`` is set where a task switch was made before it: the
    fault is then the new task's, delivered with that frame (its EIP, its stack)."""

    def __init__(self, vector: int, error_code: int, why: str, cr2: int | None = None,
                 resume: CpuFrame | None = None):
        super().__init__(why)
        self.vector, self.error_code, self.why, self.cr2, self.resume = vector, error_code, why, cr2, resume


class TripleFault(Exception):
    """Delivering #DF itself faulted: a real PC would reset; we end the guest's run."""


@dataclass(slots=True)     # made on every event: a frozen dataclass costs ~1 µs more to build
class CpuFrame:
    """The state delivery consumes and produces: where the CPU is, in the view's terms."""
    eip: int
    cs: int
    eflags: int
    esp: int
    ss: int


@dataclass(slots=True)     # made on every event: a frozen dataclass costs ~1 µs more to build
class Delivered:
    frame: CpuFrame          # the new CS:EIP, SS:ESP, EFLAGS
    gate: Gate
    handler_cpl: int
    stack_switched: bool
    error_code: int | None
    cr2: int | None = None   # a #PF raised while delivering: the address for CR2


class DeliveryView(Protocol):
    """What delivery needs of a CPU, real or virtual."""
    cpl: int
    idt_base: int
    idt_limit: int

    def read_linear(self, address: int, length: int) -> bytes: ...
    def write_linear(self, address: int, data: bytes) -> None: ...
    def descriptor(self, selector: int) -> Descriptor: ...
    def tss_base(self) -> int: ...


def table_descriptor(read_linear, base: int, limit: int, selector: int) -> Descriptor:
    """The descriptor ``selector`` names in the table at ``base`` (GDT or LDT), limit-checked."""
    index = selector & 0xFFF8
    if index + 7 > limit:
        raise DeliveryFault(GP, selector & 0xFFFC, f"selector {selector:#x} is beyond the table limit {limit:#x}")
    return decode_descriptor(struct.unpack("<Q", read_linear(base + index, 8))[0])


def _gate(view: DeliveryView, vector: int, ext: int) -> Gate:
    """The IDT entry for ``vector``: a task gate or a 32-bit interrupt or trap gate."""
    error = vector * 8 + 2 + ext
    if vector * 8 + 7 > view.idt_limit:
        raise DeliveryFault(GP, error, f"vector {vector} is beyond the IDT limit {view.idt_limit:#x}")
    raw = struct.unpack("<Q", view.read_linear(view.idt_base + vector * 8, 8))[0]
    gate = decode_gate(raw)
    if gate.type not in (TASK_GATE, 0xE, 0xF):
        raise DeliveryFault(GP, error, f"vector {vector} has IDT type {gate.type:#x}, not a task or 32-bit gate")
    return gate


def deliver(view: DeliveryView, vector: int, kind: EventKind, error_code: int | None,
            at: CpuFrame) -> Delivered:
    """Deliver one event through the view's IDT; ``at`` is the state to save (return EIP included).

    A page fault while reading the tables or pushing the frame is a fault during
    delivery, like any other: the caller escalates it.
    """
    try:
        return _deliver(view, vector, kind, error_code, at)
    except GuestFault as f:
        raise DeliveryFault(f.vector, f.error_code or 0, f.why or f"fault {f.vector} during delivery",
                            cr2=f.cr2) from None
    except NewTaskFault as f:
        task, fault = f.task, f.fault
        raise DeliveryFault(fault.vector, fault.error_code or 0, f"in the new task: {fault.why or fault}",
                            cr2=fault.cr2, resume=CpuFrame(task.eip, task.cs, task.eflags, task.esp, task.ss)) from None


def _deliver(view: DeliveryView, vector: int, kind: EventKind, error_code: int | None,
             at: CpuFrame) -> Delivered:
    ext = 0            # the SDM's EXT bit: QEMU 7.2, the referee, never sets it
    gate = _gate(view, vector, ext)
    if kind is EventKind.SOFTWARE and gate.dpl < view.cpl:
        raise DeliveryFault(GP, vector * 8 + 2, f"int {vector:#x} at CPL {view.cpl} through a DPL-{gate.dpl} gate")
    if gate.type == TASK_GATE:
        return _through_task_gate(view, vector, gate, kind, error_code, at)
    if not gate.present:
        raise DeliveryFault(NP, vector * 8 + 2 + ext, f"vector {vector}'s gate is not present")
    target_sel = gate.selector
    if target_sel & 0xFFFC == 0:
        raise DeliveryFault(GP, ext, f"vector {vector}'s gate has a null code selector")
    code = view.descriptor(target_sel)
    if not code.is_code or code.dpl > view.cpl:
        raise DeliveryFault(GP, (target_sel & 0xFFFC) + ext, f"vector {vector}'s gate selector {target_sel:#x} is not a usable code segment")
    if not code.present:
        raise DeliveryFault(NP, (target_sel & 0xFFFC) + ext, f"code segment {target_sel:#x} is not present")
    handler_cpl = view.cpl if code.is_conforming else code.dpl
    switched = handler_cpl < view.cpl
    if switched:
        tss = view.tss_base()
        esp = struct.unpack("<I", view.read_linear(tss + TSS_ESP0 + 8 * handler_cpl, 4))[0]
        ss = struct.unpack("<H", view.read_linear(tss + TSS_SS0 + 8 * handler_cpl, 2))[0]
        if ss & 0xFFFC == 0:
            raise DeliveryFault(TS, ext, f"TSS SS{handler_cpl} is null")
        ss_desc = view.descriptor(ss)
        if not ss_desc.is_writable_data or ss_desc.dpl != handler_cpl:
            raise DeliveryFault(TS, (ss & 0xFFFC) + ext, f"TSS SS{handler_cpl} {ss:#x} is not a ring-{handler_cpl} stack")
        words = [at.ss, at.esp, at.eflags, at.cs, at.eip]
    else:
        esp, ss = at.esp, at.ss
        ss_desc = view.descriptor(ss)
        words = [at.eflags, at.cs, at.eip]
    if vector in VECTORS_WITH_ERROR_CODE and kind is EventKind.EXCEPTION:
        words.append(error_code or 0)
        pushed_error = error_code or 0
    else:
        pushed_error = None
    new_esp = (esp - 4 * len(words)) & 0xFFFFFFFF
    frame = struct.pack(f"<{len(words)}I", *reversed([w & 0xFFFFFFFF for w in words]))
    try:
        view.write_linear(ss_desc.base + new_esp, frame)
    except (IndexError, ValueError) as e:
        raise DeliveryFault(SS_FAULT if not switched else TS, ext, f"cannot push the frame: {e}") from None
    eflags = at.eflags & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
    if gate.is_interrupt_gate:
        eflags &= ~EFLAGS_IF
    new_cs = (target_sel & 0xFFFC) | handler_cpl
    new_ss = ((ss & 0xFFFC) | handler_cpl) if switched else ss
    return Delivered(CpuFrame(gate.offset, new_cs, eflags, new_esp, new_ss), gate, handler_cpl,
                     switched, pushed_error)


def _through_task_gate(view: DeliveryView, vector: int, gate: Gate, kind: EventKind, error_code: int | None,
                       at: CpuFrame) -> Delivered:
    """An event through a task gate: a task switch, nested (the new task's iret comes back).

    The gate's DPL has been checked for ``int n`` as any gate's is; then only its present bit
    (#NP, with the IDT error code) before the switch, which saves ``at.eip`` as the old task's
    EIP and pushes the error code, if the event has one, on the new task's stack.
    """
    if not gate.present:
        raise DeliveryFault(NP, vector * 8 + 2, f"vector {vector}'s task gate is not present")
    if not isinstance(view, TaskSwitchView):
        raise UnmodelledTaskSwitch(f"vector {vector} is a task gate: a hardware task switch, which this technique "
                                   f"does not model")
    pushed = (error_code or 0) if kind is EventKind.EXCEPTION and vector in VECTORS_WITH_ERROR_CODE else None
    task = enter_task(view, gate.selector, at.eip, pushed)
    return Delivered(CpuFrame(task.eip, task.cs, task.eflags, task.esp, task.ss), gate, task.cpl, True, pushed)


_ESP_SS = struct.Struct("<IH")
_FRAME_WORDS = {n: struct.Struct(f"<{n}I") for n in (3, 4, 5, 6)}


def deliver_flat(memory, write, vector: int, software: bool, error_code: int | None,
                 cpl: int, idt_base: int, idt_limit: int, gdt_base: int, gdt_limit: int, tss_base,
                 eip: int, cs: int, eflags: int, esp: int, ss: int) -> tuple | None:
    """``deliver``'s common case, for the exit fast path: one function, no objects.

    Where linear addresses are guest-physical (paging off), the tables sit in RAM, the
    gate is a present 32-bit interrupt or trap gate, and every selector is a GDT one, this
    checks and does exactly what ``deliver`` does: pushes the frame (with ``write``) and
    returns (EIP, CS, EFLAGS, ESP, SS, handler CPL). In every other case, including every
    case in which delivery faults, it returns None having written nothing, and the
    caller runs ``deliver``, which raises what the CPU would. ``software`` is an ``int n``
    (else an exception: never an external interrupt). ``tss_base`` is called only for a
    stack switch. Descriptors are decoded once per raw value (``decode_*`` cache).
    """
    if vector * 8 + 7 > idt_limit:
        return None
    read_u64 = memory.read_u64
    try:
        gate = decode_gate(read_u64(idt_base + vector * 8))
        if gate.type not in (0xE, 0xF) or not gate.present or (software and gate.dpl < cpl):
            return None
        target = gate.selector
        if target & 0xFFFC == 0 or target & 4 or (target | 7) > gdt_limit:
            return None
        code = decode_descriptor(read_u64(gdt_base + (target & 0xFFF8)))
        if not code.is_code or code.dpl > cpl or not code.present:
            return None
        handler_cpl = cpl if code.is_conforming else code.dpl
        pushes_error = not software and vector in VECTORS_WITH_ERROR_CODE
        if handler_cpl < cpl:
            new_esp, new_ss = _ESP_SS.unpack(memory.read(tss_base() + TSS_ESP0 + 8 * handler_cpl, 6))
            if new_ss & 0xFFFC == 0 or new_ss & 4 or (new_ss | 7) > gdt_limit:
                return None
            stack = decode_descriptor(read_u64(gdt_base + (new_ss & 0xFFF8)))
            if not stack.is_writable_data or stack.dpl != handler_cpl:
                return None
            new_ss = (new_ss & 0xFFFC) | handler_cpl
            if pushes_error:
                new_esp = (new_esp - 24) & 0xFFFFFFFF
                frame = _FRAME_WORDS[6].pack(error_code or 0, eip, cs, eflags, esp, ss)
            else:
                new_esp = (new_esp - 20) & 0xFFFFFFFF
                frame = _FRAME_WORDS[5].pack(eip, cs, eflags, esp, ss)
        else:
            if ss & 4 or (ss | 7) > gdt_limit:
                return None
            stack = decode_descriptor(read_u64(gdt_base + (ss & 0xFFF8)))   # as deliver() reads it
            new_ss = ss
            if pushes_error:
                new_esp = (esp - 16) & 0xFFFFFFFF
                frame = _FRAME_WORDS[4].pack(error_code or 0, eip, cs, eflags)
            else:
                new_esp = (esp - 12) & 0xFFFFFFFF
                frame = _FRAME_WORDS[3].pack(eip, cs, eflags)
        write(stack.base + new_esp, frame)
    except IndexError:                  # a table or the stack outside RAM: deliver() says what happens
        return None
    eflags &= ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
    if gate.type == 0xE:
        eflags &= ~EFLAGS_IF
    return gate.offset, (target & 0xFFFC) | handler_cpl, eflags, new_esp, new_ss, handler_cpl


def deliver_with_escalation(view: DeliveryView, vector: int, kind: EventKind,
                            error_code: int | None, at: CpuFrame,
                            fault_eip: int | None = None) -> tuple[Delivered, list[str]]:
    """Deliver, turning faults during delivery into the exception the CPU would raise.

    ``fault_eip`` is the EIP a fault during delivery saves: for ``int n`` that is the
    int instruction itself, not the instruction after it.
    Returns what was delivered and a list of notes (why an escalation happened), for traces.
    """
    notes: list[str] = []
    cr2 = None
    for _ in range(3):
        try:
            delivered = deliver(view, vector, kind, error_code, at)
            return (replace(delivered, cr2=cr2) if cr2 is not None else delivered), notes
        except DeliveryFault as fault:
            notes.append(f"delivering vector {vector} faulted: {fault.why}")
            if vector == DF:
                raise TripleFault(f"triple fault: {fault.why}") from None
            if fault.vector == PF:
                cr2 = fault.cr2          # the CPU sets CR2 as it detects the #PF, #DF or not
            # SDM Table 6-5, on the pair: the event being delivered, the fault it met.
            first = vector if kind is EventKind.EXCEPTION else None
            double = ((first in CONTRIBUTORY and fault.vector in CONTRIBUTORY)
                      or (first == PF and fault.vector in CONTRIBUTORY | {PF}))
            vector, error_code = (DF, 0) if double else (fault.vector, fault.error_code)
            kind = EventKind.EXCEPTION
            if fault.resume is not None:
                at, fault_eip = fault.resume, None     # a task switch was made: the new task's fault
            elif fault_eip is not None:
                at = CpuFrame(fault_eip, at.cs, at.eflags, at.esp, at.ss)
    try:
        return deliver(view, DF, EventKind.EXCEPTION, 0, at), notes
    except DeliveryFault as fault:
        raise TripleFault(f"triple fault: {fault.why}") from None


def through_call_gate(view: DeliveryView, gate_selector: int, at: CpuFrame, call: bool) -> Delivered:
    """A far call or jmp through a 32-bit call gate (SDM Vol. 3, 5.8.4-5.8.6), as QEMU does it.

    Checks the gate (DPL >= CPL and >= RPL, present), then its code segment (DPL <= CPL,
    present); a call to a more privileged non-conforming segment switches to the TSS's
    stack for that ring and copies the gate's parameter count of dwords across. Raises
    ``DeliveryFault`` with the error code the CPU would push.
    """
    sel = gate_selector & 0xFFFC
    gate_desc = view.descriptor(gate_selector)
    gate = decode_gate(gate_desc.raw)
    if gate.type != CALL_GATE32:
        raise DeliveryFault(GP, sel, f"selector {gate_selector:#x} is not a 32-bit call gate")
    if gate.dpl < view.cpl or gate.dpl < gate_selector & 3:
        raise DeliveryFault(GP, sel, f"call gate {gate_selector:#x} has DPL {gate.dpl} below CPL {view.cpl}")
    if not gate.present:
        raise DeliveryFault(NP, sel, f"call gate {gate_selector:#x} is not present")
    target = gate.selector
    if target & 0xFFFC == 0:
        raise DeliveryFault(GP, 0, f"call gate {gate_selector:#x} has a null code selector")
    code = view.descriptor(target)
    if not code.is_code or code.dpl > view.cpl or (not call and not code.is_conforming and code.dpl != view.cpl):
        raise DeliveryFault(GP, target & 0xFFFC, f"call gate {gate_selector:#x} targets {target:#x}, not a usable code segment")
    if not code.present:
        raise DeliveryFault(NP, target & 0xFFFC, f"code segment {target:#x} is not present")
    new_cpl = view.cpl if code.is_conforming else code.dpl
    switched = call and new_cpl < view.cpl
    params = (gate_desc.raw >> 32) & 0x1F
    if switched:
        tss = view.tss_base()
        esp = struct.unpack("<I", view.read_linear(tss + TSS_ESP0 + 8 * new_cpl, 4))[0]
        ss = struct.unpack("<H", view.read_linear(tss + TSS_SS0 + 8 * new_cpl, 2))[0]
        if ss & 0xFFFC == 0:
            raise DeliveryFault(TS, 0, f"TSS SS{new_cpl} is null")
        ss_desc = view.descriptor(ss)
        if not ss_desc.is_writable_data or ss_desc.dpl != new_cpl or ss & 3 != new_cpl:
            raise DeliveryFault(TS, ss & 0xFFFC, f"TSS SS{new_cpl} {ss:#x} is not a ring-{new_cpl} stack")
        old_ss = view.descriptor(at.ss) if at.ss & 0xFFFC else None
        old_base = old_ss.base if old_ss is not None else 0
        copied = [struct.unpack("<I", view.read_linear(old_base + at.esp + 4 * i, 4))[0]
                  for i in range(params)]
        words = [at.ss, at.esp] + list(reversed(copied)) + [at.cs, at.eip]
    else:
        esp, ss = at.esp, at.ss
        ss_desc = view.descriptor(ss)
        words = [at.cs, at.eip] if call else []
    new_esp = (esp - 4 * len(words)) & 0xFFFFFFFF
    if words:
        view.write_linear(ss_desc.base + new_esp,
                          struct.pack(f"<{len(words)}I", *reversed([w & 0xFFFFFFFF for w in words])))
    new_ss = ((ss & 0xFFFC) | new_cpl) if switched else ss
    frame = CpuFrame(gate.offset, (target & 0xFFFC) | new_cpl, at.eflags, new_esp, new_ss)
    return Delivered(frame, gate, new_cpl, switched, None)
