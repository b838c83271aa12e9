"""Decoding the instruction at a trap: capstone turns the bytes at EIP into something to emulate.

The decoder is pure (bytes in, ``Instruction`` out), so it can be tested without a CPU.
Capstone's operand details give registers and memory operands; the emulator computes
effective addresses from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as C

_cs = Cs(CS_ARCH_X86, CS_MODE_32)
_cs.detail = True

MAX_INSN = 15


@dataclass(frozen=True)
class MemOperand:
    segment: str | None
    base: str | None
    index: str | None
    scale: int
    disp: int


@dataclass(frozen=True)
class Instruction:
    address: int
    size: int
    raw: bytes
    mnemonic: str
    op_str: str
    operands: tuple           # each: ("reg", name) | ("imm", value) | ("mem", MemOperand, size)

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


def _reg(insn, reg_id: int) -> str | None:
    return insn.reg_name(reg_id) if reg_id else None


@lru_cache(maxsize=4096)
def decode(code: bytes, address: int) -> Instruction | None:
    """The first instruction in ``code`` at ``address``, or None if it is not valid x86."""
    for insn in _cs.disasm(code, address, 1):
        ops = []
        for op in insn.operands:
            if op.type == C.X86_OP_REG:
                ops.append(("reg", insn.reg_name(op.reg)))
            elif op.type == C.X86_OP_IMM:
                ops.append(("imm", op.imm & 0xFFFFFFFF))
            elif op.type == C.X86_OP_MEM:
                m = op.mem
                ops.append(("mem", MemOperand(_reg(insn, m.segment), _reg(insn, m.base),
                                              _reg(insn, m.index), m.scale, m.disp), op.size))
        return Instruction(insn.address, insn.size, bytes(insn.bytes), insn.mnemonic,
                           insn.op_str, tuple(ops))
    return None
