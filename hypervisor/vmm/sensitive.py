"""The sensitive-but-unprivileged instructions, performed on the virtual CPU.

Trap-and-emulate never sees these: at ring 1 they run without a fault and show the real CPU
(Popek and Goldberg's requirement broken, the lecture's point). Binary translation makes each of
them a callout, and this module is what the callout does: what the instruction would have done
at the guest's *virtual* privilege, with its virtual IF, IOPL, descriptor-table registers, CR0
and selectors, exactly as QEMU 5 (Unicorn's CPU, the bare machine's reference) does it:

* ``pushf``/``popf``: EFLAGS with the virtual IF and IOPL; ``popf`` changes IF only at CPL <=
  IOPL and IOPL only at CPL 0, silently (helper_write_eflags' masks), and never VM, RF, VIF, VIP;
* ``sgdt``/``sidt``: the virtual GDTR/IDTR (a 16-bit operand size keeps 24 bits of the base);
* ``sldt``/``str``/``smsw``: the virtual LDTR, TR and CR0 (to a 32-bit register: the whole
  value, zero-extended; to memory: 16 bits);
* ``mov r/m, sreg`` and ``push sreg``: the selector as the guest loaded it (CS and SS show the
  virtual ring, not the real one);
* ``lar``/``lsl``/``verr``/``verw``: the guest's own descriptor (its GDT or LDT, not the shadow)
  checked against the virtual CPL and the selector's RPL; only ZF and the destination change.

Every handler has ``emulate.py``'s shape: it gets the decoded instruction, raises the fault the
CPU would raise (``GuestFault``, nothing changed), and returns (reason, why); the caller then
moves EIP past it. What it needs of a technique is ``Sensitive``.
"""
from __future__ import annotations

import struct
from typing import Callable, Protocol

from ..machine.cpu import WIDE_NAME
from ..machine.faults import GuestFault
from ..machine.interrupts import UD
from .decode import Instruction, Mem, Reg
from .emulate import Emulated
from .exits import ExitReason

CF, PF_FLAG, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
# What popf may change at CPL 0 (QEMU: TF AC ID NT IF IOPL and the arithmetic flags; never VM RF VIF VIP).
POPF_MASK = CF | PF_FLAG | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | AC | ID


class Sensitive(Emulated, Protocol):
    """What these handlers need beyond the privileged-instruction emulator's interface."""

    def write_linear(self, address: int, data: bytes) -> None: ...
    def real_eflags(self) -> int: ...
    def set_real_eflags(self, value: int) -> None: ...
    def guest_selector(self, segment: str) -> int: ...
    def descriptor_raw(self, selector: int) -> int | None: ...


def _operand_size(insn: Instruction) -> int:
    return 2 if 0x66 in insn.prefixes else 4


def _stack_address(m: Sensitive, esp: int) -> int:
    return (m.segment_base("ss") + esp) & 0xFFFFFFFF


def _push(m: Sensitive, value: int, size: int) -> None:
    esp = (m.read_register("esp") - size) & 0xFFFFFFFF
    m.write_linear(_stack_address(m, esp), (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    m.write_register("esp", esp)


def _store(m: Sensitive, op, value: int) -> None:
    """Write ``value`` to a register (a 16-bit one keeps its register's high word) or to memory
    (16 bits)."""
    if isinstance(op, Reg) and op.size == 2:
        wide = WIDE_NAME[op.name]
        m.write_register(wide, (m.read_register(wide) & 0xFFFF0000) | (value & 0xFFFF))
    elif isinstance(op, Reg):
        m.write_register(op.name, value & 0xFFFFFFFF)
    else:
        m.write_linear(m.effective_address(op), (value & 0xFFFF).to_bytes(2, "little"))


def visible_eflags(m: Sensitive) -> int:
    """EFLAGS as the guest would read it: the real arithmetic flags, the virtual IF and IOPL."""
    real = m.real_eflags() & ~(IF | IOPL | RF | VM)
    return real | (IF if m.vcpu.iflag else 0) | (m.vcpu.iopl << 12) | 0x2


def pushf(m: Sensitive, insn: Instruction):
    _push(m, visible_eflags(m), _operand_size(insn))
    return ExitReason.CALLOUT, "pushf: the monitor pushes EFLAGS with the virtual IF and IOPL"


def popf(m: Sensitive, insn: Instruction):
    size = _operand_size(insn)
    esp = m.read_register("esp")
    value = int.from_bytes(m.read_linear(_stack_address(m, esp), size), "little")
    v = m.vcpu
    mask = POPF_MASK
    if v.cpl > 0:
        mask &= ~IOPL
    if v.cpl > v.iopl:
        mask &= ~IF
    if size == 2:
        mask &= 0xFFFF
    was_enabled = v.iflag
    if mask & IF:
        v.iflag = bool(value & IF)
    if mask & IOPL:
        v.iopl = (value >> 12) & 3
    real_mask = mask & ~(IF | IOPL)
    m.set_real_eflags((m.real_eflags() & ~real_mask) | (value & real_mask))
    m.write_register("esp", (esp + size) & 0xFFFFFFFF)
    if v.iflag and not was_enabled:
        m.interrupt_flag_set()
    return ExitReason.INTERRUPT_FLAG, "popf: the monitor loads the virtual IF and IOPL (the CPU would keep them silently)"


def _table_register(m: Sensitive, insn: Instruction, base: int, limit: int, what: str):
    op = insn.operands[0]
    if not isinstance(op, Mem):
        raise GuestFault(UD, None, why=f"{what} with a register operand")
    if _operand_size(insn) == 2:
        base &= 0xFFFFFF
    m.write_linear(m.effective_address(op), struct.pack("<HI", limit & 0xFFFF, base & 0xFFFFFFFF))


def sgdt(m: Sensitive, insn: Instruction):
    _table_register(m, insn, m.vcpu.gdt_base, m.vcpu.gdt_limit, "sgdt")
    return ExitReason.GDTR_IDTR_ACCESS, "sgdt: the monitor stores the virtual GDTR, not its shadow's"


def sidt(m: Sensitive, insn: Instruction):
    _table_register(m, insn, m.vcpu.idt_base, m.vcpu.idt_limit, "sidt")
    return ExitReason.GDTR_IDTR_ACCESS, "sidt: the monitor stores the virtual IDTR"


def sldt(m: Sensitive, insn: Instruction):
    _store(m, insn.operands[0], m.vcpu.ldtr)
    return ExitReason.LDTR_TR_ACCESS, "sldt: the monitor stores the virtual LDTR"


def str_(m: Sensitive, insn: Instruction):
    _store(m, insn.operands[0], m.vcpu.tr)
    return ExitReason.LDTR_TR_ACCESS, "str: the monitor stores the virtual TR"


def smsw(m: Sensitive, insn: Instruction):
    op = insn.operands[0]
    if isinstance(op, Reg) and op.size == 4:         # QEMU writes the low 16 bits only, even of a 32-bit register
        m.write_register(op.name, (m.read_register(op.name) & 0xFFFF0000) | (m.vcpu.cr0 & 0xFFFF))
    else:
        _store(m, op, m.vcpu.cr0)
    return ExitReason.CR_ACCESS, "smsw: the monitor stores the virtual CR0"


def mov(m: Sensitive, insn: Instruction):
    """mov r/m, sreg (the other movs are not sensitive-unprivileged)."""
    dest, source = insn.operands
    if not (isinstance(source, Reg) and source.name in ("cs", "ss", "ds", "es", "fs", "gs")):
        raise GuestFault(UD, None, why=f"{insn.text} is not a segment-register read")
    _store(m, dest, m.guest_selector(source.name))
    return ExitReason.SEGMENT_LOAD, f"mov from {source.name}: the monitor gives the selector with the virtual RPL"


def push(m: Sensitive, insn: Instruction):
    """push sreg: QEMU writes the selector zero-extended to the operand size."""
    (source,) = insn.operands
    _push(m, m.guest_selector(source.name), _operand_size(insn))
    return ExitReason.SEGMENT_LOAD, f"push {source.name}: the monitor pushes the selector with the virtual RPL"


# -- lar, lsl, verr, verw: the guest's descriptor against the virtual CPL ----------------------------
_LAR_SYSTEM = frozenset({1, 2, 3, 4, 5, 9, 0xB, 0xC})      # TSS 16/32 (both states), LDT, gates
_LSL_SYSTEM = frozenset({1, 2, 3, 9, 0xB})                 # TSS and LDT: what has a limit


def _checked(m: Sensitive, selector: int, system_types: frozenset[int] | None, verify: str | None) -> int | None:
    """The raw descriptor if ``selector`` passes the instruction's checks, else None (ZF=0).
    ``system_types``: the system types lar/lsl accept (None: none, verr/verw); ``verify``:
    "r" or "w" for verr/verw's readability or writability."""
    if selector & 0xFFFC == 0:
        return None
    raw = m.descriptor_raw(selector)
    if raw is None:
        return None
    high = raw >> 32
    kind, system, dpl = (high >> 8) & 0xF, not (high >> 12) & 1, (high >> 13) & 3
    code, conforming = not system and bool(kind & 8), not system and (kind & 0xC) == 0xC
    if system:
        if system_types is None or kind not in system_types:
            return None
    elif verify == "r" and code and not kind & 2:
        return None                         # execute-only code
    elif verify == "w" and (code or not kind & 2):
        return None                         # code, or read-only data
    if not conforming and (dpl < m.vcpu.cpl or dpl < (selector & 3)):
        return None                         # conforming code is the one exception to the privilege check
    return raw


def _set_zf(m: Sensitive, on: bool) -> None:
    eflags = m.real_eflags()
    m.set_real_eflags(eflags | ZF if on else eflags & ~ZF)


def _selector_operand(m: Sensitive, insn: Instruction) -> int:
    return m.operand_value(insn.operands[-1], 2) & 0xFFFF


def lar(m: Sensitive, insn: Instruction):
    raw = _checked(m, _selector_operand(m, insn), _LAR_SYSTEM, None)
    if raw is not None:
        _store(m, insn.operands[0], (raw >> 32) & 0x00F0FF00)
    _set_zf(m, raw is not None)
    return ExitReason.CALLOUT, "lar: the monitor reads the guest's own descriptor, checked against the virtual CPL"


def lsl(m: Sensitive, insn: Instruction):
    raw = _checked(m, _selector_operand(m, insn), _LSL_SYSTEM, None)
    if raw is not None:
        limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF0000)
        if (raw >> 55) & 1:
            limit = (limit << 12) | 0xFFF
        _store(m, insn.operands[0], limit)
    _set_zf(m, raw is not None)
    return ExitReason.CALLOUT, "lsl: the monitor reads the guest's own segment limit"


def verr(m: Sensitive, insn: Instruction):
    _set_zf(m, _checked(m, _selector_operand(m, insn), None, "r") is not None)
    return ExitReason.CALLOUT, "verr: the monitor checks the guest's descriptor against the virtual CPL"


def verw(m: Sensitive, insn: Instruction):
    _set_zf(m, _checked(m, _selector_operand(m, insn), None, "w") is not None)
    return ExitReason.CALLOUT, "verw: the monitor checks the guest's descriptor against the virtual CPL"


SENSITIVE: dict[str, Callable] = {
    "pushf": pushf, "pushfd": pushf, "popf": popf, "popfd": popf, "sgdt": sgdt, "sidt": sidt,
    "sldt": sldt, "str": str_, "smsw": smsw, "mov": mov, "push": push,
    "lar": lar, "lsl": lsl, "verr": verr, "verw": verw,
}
