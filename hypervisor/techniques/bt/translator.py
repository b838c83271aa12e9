"""Translating one guest basic block into code that runs from the translation cache.

A block starts at a guest linear address and runs to the first instruction that ends it
(``classify.ends_block``: every control transfer, and the callouts that may move control), to
``MAX_INSTRUCTIONS``, or to the end of the guest page, so that a write to one page invalidates
exactly the blocks translated from it. What each kind of instruction becomes:

================  ===========================================================================
IDENT, TRAP       the guest's bytes (a TRAP's exception is raised by the CPU; the monitor
                  gives the guest its own EIP, from the map below)
CALLOUT           ``int3``: the monitor finds the callout by its TC address and performs the
                  guest instruction on the virtual CPU
jmp rel           ``jmp rel32`` to the target's translation (or to an exit stub until it exists)
jcc rel           ``jcc rel32`` to the target's, then ``jmp rel32`` to the next instruction's
loop/jecxz        ``loop +2; jmp +5; jmp rel32 taken; jmp rel32 next`` (no rel32 forms exist)
call rel          ``push imm32`` (the *guest's* return address) and ``jmp rel32``
ret               ``push dword [esp]; lea esp, [esp+4]`` (a read of the return address that
                  faults where ret's would, flags untouched), then ``jmp LOOKUP``
jmp r/m           ``push r/m`` (the same operand, read as jmp reads it), then ``jmp LOOKUP``
call r/m          ``push r/m; push dword [esp]; mov dword [esp+4], return``, then ``jmp LOOKUP``
================  ===========================================================================

So the guest never sees a TC address: what ``call`` pushes is the guest's return address, and
an indirect transfer finds its translation through the cache's lookup stub (cache.py), with the
guest target on top of the stack. Every block also has an *indirect entry* before its direct
one, ``mov dword [esp-4], guest_eip``: the lookup returns into it with ``ret``, which leaves the
TC address in the stack slot just popped, and the entry puts back the guest's.

The result is position-dependent only through its rel32 fields, which ``TranslatedBlock``
lists (``exits`` to guest targets, ``lookups`` to the stub) for the cache to fill in where it
places the block.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from ...vmm.decode import MAX_INSN, Instruction, decode
from .classify import Kind, classify, ends_block, why_called_out

MAX_INSTRUCTIONS = 64                # guest instructions in one block at most
PAGE = 0x1000
INT3 = b"\xcc"
ENTRY = 8                            # bytes of the indirect entry before the direct one


@dataclass(frozen=True)
class Callout:
    """A guest instruction the monitor performs: at ``tc`` (an ``int3``) in the cache."""
    guest_eip: int
    insn: Instruction | None         # None: bytes that do not decode (the monitor raises what the CPU would)
    why: str
    ends_block: bool                 # False: the monitor resumes at the next TC instruction


@dataclass(frozen=True)
class Piece:
    """One emitted instruction, at ``offset`` in the block. ``boundary``: before it, the guest's
    state is exactly its state before the guest instruction at ``guest_eip`` (the CPU may stop
    there, and an event may be delivered); otherwise it is part way through the guest instruction
    at ``guest_eip``. ``undo_esp``: what to add to ESP if this piece faults (earlier pieces of the
    same guest instruction pushed that much), so the guest sees the fault at ``guest_eip`` with its
    ESP as it was."""
    offset: int
    guest_eip: int
    boundary: bool
    undo_esp: int = 0
    counts: bool = False             # running it performs the guest instruction (its first piece, not a callout's)


@dataclass
class TranslatedBlock:
    guest_eip: int
    guest_end: int                   # the first guest byte after the block
    instructions: int                # guest instructions translated
    code: bytearray
    pieces: list[Piece]
    callouts: dict[int, Callout]     # block offset of each int3 -> what it stands for
    exits: list[tuple[int, int]]     # (offset of a rel32 field, guest target)
    lookups: list[int]               # offsets of rel32 fields aimed at the lookup stub
    guest_bytes: bytes = b""
    tc: int | None = field(default=None)      # where the cache placed it (its indirect entry)

    @property
    def counted(self) -> list[int]:
        """Offsets of the pieces that perform a guest instruction (the block hook counts them)."""
        return [p.offset for p in self.pieces if p.counts]

    @property
    def pages(self) -> set[int]:
        """The guest pages the block was read from."""
        return set(range(self.guest_eip >> 12, ((self.guest_end - 1) >> 12) + 1))

    def piece_at(self, offset: int) -> Piece | None:
        """The emitted instruction at this block offset, or None (inside one, or an exit stub)."""
        for piece in self.pieces:
            if piece.offset == offset:
                return piece
        return None


class _Emitter:
    def __init__(self, guest_eip: int):
        self.code = bytearray(struct.pack("<BBBBI", 0xC7, 0x44, 0x24, 0xFC, guest_eip))   # mov [esp-4], imm32
        self.pieces: list[Piece] = []
        self.callouts: dict[int, Callout] = {}
        self.exits: list[tuple[int, int]] = []
        self.lookups: list[int] = []

    def piece(self, guest_eip: int, data: bytes, boundary: bool, undo_esp: int = 0, counts: bool = False) -> int:
        at = len(self.code)
        self.pieces.append(Piece(at, guest_eip, boundary, undo_esp, counts))
        self.code += data
        return at

    def jump(self, guest_eip: int, target: int | None, boundary: bool, opcode: bytes = b"\xe9",
             undo_esp: int = 0, counts: bool = False) -> None:
        """A rel32 jump (or jcc, by ``opcode``) to a guest target's translation (``target``), or to
        the lookup stub (None), standing at ``guest_eip``."""
        at = self.piece(guest_eip, opcode + b"\0\0\0\0", boundary, undo_esp, counts)
        field_at = at + len(opcode)
        if target is None:
            self.lookups.append(field_at)
        else:
            self.exits.append((field_at, target & 0xFFFFFFFF))


_LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")


def _opcode_at(insn: Instruction) -> int:
    """Where the opcode starts in the instruction's bytes: after every legacy prefix (capstone's
    prefix list leaves out some it ignores, as an F3 before a jcc)."""
    at = 0
    while at < len(insn.raw) - 1 and insn.raw[at] in _LEGACY_PREFIXES:
        at += 1
    return at


def _push_form(insn: Instruction) -> bytes:
    """``push r/m32`` with the operand of a ``jmp r/m32`` or ``call r/m32`` (FF /4, FF /2 -> FF /6):
    the same prefixes, ModRM (its reg field changed), SIB and displacement, so the operand is
    read exactly as the branch reads it."""
    raw = insn.raw
    at = _opcode_at(insn)
    modrm = raw[at + 1]
    return raw[:at + 1] + bytes([(modrm & 0xC7) | (6 << 3)]) + raw[at + 2:]


def translate_block(read_code: Callable[[int, int], bytes], guest_eip: int, guest_cs_base: int = 0) -> TranslatedBlock:
    """Translate the guest block at linear ``guest_eip``. ``read_code(address, length)`` gives guest
    code bytes (fewer where the readable code ends); ``guest_cs_base`` decides whether a read
    through CS may be copied (only with a flat CS)."""
    e = _Emitter(guest_eip)
    eip, count, source = guest_eip, 0, bytearray()
    while True:
        code = read_code(eip, MAX_INSN)
        insn = decode(bytes(code), eip) if code else None
        if insn is None:
            # Bytes that do not decode (or cannot be read): the monitor performs them, and raises
            # what the CPU would (#UD, or the fetch's #PF).
            at = e.piece(eip, INT3, True)
            e.callouts[at] = Callout(eip, None, "bytes that do not decode, or cannot be fetched", True)
            count += 1
            end = eip + 1
            break
        source += insn.raw
        count += 1
        kind = classify(insn, guest_cs_base)
        _emit(e, insn, kind, guest_cs_base)
        eip = end = (eip + insn.size) & 0xFFFFFFFF
        if ends_block(kind, insn):
            break
        if count >= MAX_INSTRUCTIONS or eip >> 12 != guest_eip >> 12:
            e.jump(eip, eip, True)                  # on into the next block
            break
    return TranslatedBlock(guest_eip, end, count, e.code, e.pieces, e.callouts, e.exits, e.lookups, bytes(source))


def _emit(e: _Emitter, insn: Instruction, kind: Kind, guest_cs_base: int) -> None:
    g, next_eip = insn.address, (insn.address + insn.size) & 0xFFFFFFFF
    if kind is Kind.IDENT:
        e.piece(g, insn.raw, True, counts=True)
    elif kind is Kind.TRAP:
        e.piece(g, insn.raw, True, counts=True)
        e.jump(next_eip, next_eip, True)                     # where the handler's iret comes back to
    elif kind is Kind.CALLOUT:
        at = e.piece(g, INT3, True)
        e.callouts[at] = Callout(g, insn, why_called_out(insn, guest_cs_base) or "a far transfer", ends_block(kind, insn))
    elif kind is Kind.JUMP:
        e.jump(g, insn.operands[0].value, True, counts=True)
    elif kind is Kind.BRANCH:
        at = _opcode_at(insn)
        condition = insn.raw[at + 1] - 0x80 if insn.raw[at] == 0x0F else insn.raw[at] - 0x70
        e.jump(g, insn.operands[0].value, True, opcode=bytes([0x0F, 0x80 + condition]), counts=True)
        e.jump(next_eip, next_eip, True)                     # not taken: at the next instruction
    elif kind is Kind.LOOP:
        at = _opcode_at(insn)
        opcode = insn.raw[at]
        prefix = b"\x67" if 0x67 in insn.raw[:at] else b""
        target = insn.operands[0].value
        e.piece(g, prefix + bytes([opcode, 0x02]), True, counts=True)     # taken: over the next jmp
        e.piece(next_eip, b"\xeb\x05", True)                # not taken: over the taken jmp
        e.jump(target, target, True)
        e.jump(next_eip, next_eip, True)
    elif kind is Kind.CALL:
        target = insn.operands[0].value
        e.piece(g, b"\x68" + struct.pack("<I", next_eip), True, counts=True)   # the guest's return address
        e.jump(target, target, True)                         # the call is done: at its target
    elif kind is Kind.RETURN:
        e.piece(g, b"\xff\x34\x24", True, counts=True)       # push dword [esp]: ret's read
        e.piece(g, b"\x8d\x64\x24\x04", False, undo_esp=4)   # lea esp, [esp+4]
        e.jump(g, None, False)
    elif kind is Kind.JUMP_INDIRECT:
        e.piece(g, _push_form(insn), True, counts=True)
        e.jump(g, None, False, undo_esp=4)
    elif kind is Kind.CALL_INDIRECT:
        e.piece(g, _push_form(insn), True, counts=True)                     # the target
        e.piece(g, b"\xff\x34\x24", False, undo_esp=4)                      # below it, a copy
        e.piece(g, b"\xc7\x44\x24\x04" + struct.pack("<I", next_eip), False, undo_esp=8)   # the return address
        e.jump(g, None, False, undo_esp=8)
