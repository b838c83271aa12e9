"""Decoding the instruction at an exit: capstone turns the bytes at EIP into something to emulate.

The decoder is pure (bytes in, ``Instruction`` out), so it can be tested without a CPU.
Operands are typed values — ``Reg``, ``Mem`` and ``Imm`` — so an emulator reads
``op.name`` or ``op.size``, never a tuple position. A memory operand knows how to
compute its offset from the registers and which segment it goes through (SS for
ESP/EBP bases, DS otherwise, unless overridden); the monitor adds the segment base.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Union

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as C

_cs = Cs(CS_ARCH_X86, CS_MODE_32)
_cs.detail = True

MAX_INSN = 15
SEGMENT_REGISTERS = frozenset({"cs", "ss", "ds", "es", "fs", "gs"})


@dataclass(frozen=True)
class Reg:
    name: str                  # capstone's name: "eax", "ax", "cr0", "ss", "dr7", ...
    size: int


@dataclass(frozen=True)
class Imm:
    value: int
    size: int


@dataclass(frozen=True)
class Mem:
    segment: str | None        # an explicit override, or None
    base: str | None
    index: str | None
    scale: int
    disp: int
    size: int                  # bytes the instruction reads or writes there (6 for m16:32)
    # capstone's CS_AC_READ (1) | CS_AC_WRITE (2), 0 where it does not say; not part of what the
    # operand *is* (two equal operands may be read by one instruction and written by another)
    access: int = field(default=0, compare=False)

    @property
    def default_segment(self) -> str:
        return "ss" if self.base in ("esp", "ebp", "sp", "bp") else "ds"

    def offset(self, read_register: Callable[[str], int]) -> int:
        """The effective address within the segment (base + index * scale + disp)."""
        addr = self.disp
        if self.base:
            addr += read_register(self.base)
        if self.index:
            addr += read_register(self.index) * self.scale
        return addr & 0xFFFFFFFF


Operand = Union[Reg, Imm, Mem]


@dataclass(frozen=True)
class Instruction:
    address: int
    size: int
    raw: bytes
    mnemonic: str
    op_str: str
    operands: tuple[Operand, ...]
    prefixes: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


def _reg(insn, reg_id: int) -> str | None:
    return insn.reg_name(reg_id) if reg_id else None


@lru_cache(maxsize=4096)
def decode(code: bytes, address: int) -> Instruction | None:
    """The first instruction in ``code`` at ``address``, or None if it is not valid x86."""
    for insn in _cs.disasm(code, address, 1):
        ops: list[Operand] = []
        for op in insn.operands:
            if op.type == C.X86_OP_REG:
                ops.append(Reg(insn.reg_name(op.reg), op.size))
            elif op.type == C.X86_OP_IMM:
                ops.append(Imm(op.imm & 0xFFFFFFFF, op.size))
            elif op.type == C.X86_OP_MEM:
                m = op.mem
                ops.append(Mem(_reg(insn, m.segment), _reg(insn, m.base), _reg(insn, m.index),
                               m.scale, m.disp, op.size, getattr(op, "access", 0) & 3))
        prefixes = tuple(p for p in insn.prefix if p)
        return Instruction(insn.address, insn.size, bytes(insn.bytes), insn.mnemonic,
                           insn.op_str, tuple(ops), prefixes)
    return None
