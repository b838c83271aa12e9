"""Segment descriptors, gates and the TSS: the bit layouts of Intel SDM Vol. 3, chapters 3 and 7.

Pure functions over bytes, so they can be tested directly. The monitor needs them
because Unicorn never walks the IDT itself (interrupt delivery is ours to do), and
because trap-and-emulate builds *shadow* descriptor tables in which the guest
kernel's ring-0 segments are compressed into ring 1.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

# System descriptor / gate types (S = 0).
TSS32_AVAILABLE = 0x9
TSS32_BUSY = 0xB
TASK_GATE = 0x5
INTERRUPT_GATE16 = 0x6
TRAP_GATE16 = 0x7
CALL_GATE32 = 0xC
INTERRUPT_GATE32 = 0xE
TRAP_GATE32 = 0xF

# Offsets of the ring stacks in a 32-bit TSS.
TSS_ESP0, TSS_SS0 = 4, 8


@dataclass(frozen=True)
class Descriptor:
    """A code, data or system segment descriptor, decoded."""
    base: int
    limit: int          # in bytes, granularity applied
    type: int           # 4-bit type field
    system: bool        # S bit clear: TSS, LDT, gates
    dpl: int
    present: bool
    big: bool           # D/B bit: 32-bit segment
    raw: int

    @property
    def is_code(self) -> bool:
        return not self.system and bool(self.type & 0x8)

    @property
    def is_conforming(self) -> bool:
        return self.is_code and bool(self.type & 0x4)

    @property
    def is_writable_data(self) -> bool:
        return not self.system and not (self.type & 0x8) and bool(self.type & 0x2)


@dataclass(frozen=True)
class Gate:
    """An IDT entry, decoded."""
    selector: int
    offset: int
    type: int
    dpl: int
    present: bool

    @property
    def is_interrupt_gate(self) -> bool:
        return self.type in (INTERRUPT_GATE32, INTERRUPT_GATE16)


@lru_cache(maxsize=1 << 12)
def decode_descriptor(raw: int) -> Descriptor:
    """Decoded once per distinct raw value: an event decodes the same few descriptors again and again."""
    limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF0000)
    if raw & (1 << 55):                       # G: 4 KiB granularity
        limit = (limit << 12) | 0xFFF
    base = ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24)
    access = (raw >> 40) & 0xFF
    return Descriptor(base=base, limit=limit, type=access & 0xF, system=not (access & 0x10),
                      dpl=(access >> 5) & 3, present=bool(access & 0x80),
                      big=bool(raw & (1 << 54)), raw=raw)


@lru_cache(maxsize=1 << 12)
def decode_gate(raw: int) -> Gate:
    access = (raw >> 40) & 0xFF
    return Gate(selector=(raw >> 16) & 0xFFFF,
                offset=(raw & 0xFFFF) | ((raw >> 32) & 0xFFFF0000),
                type=access & 0xF, dpl=(access >> 5) & 3, present=bool(access & 0x80))


def with_dpl(raw: int, dpl: int) -> int:
    """The same descriptor with another DPL (ring compression edits only this field)."""
    return (raw & ~(3 << 45)) | ((dpl & 3) << 45)


def with_present(raw: int, present: bool) -> int:
    return (raw | (1 << 47)) if present else (raw & ~(1 << 47))


def encode_segment(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    """Build a descriptor; ``limit`` is in units of the granularity in ``flags``."""
    return struct.unpack("<Q", struct.pack(
        "<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
        ((flags & 0xF) << 4) | ((limit >> 16) & 0xF), (base >> 24) & 0xFF))[0]


def unicorn_flags(d: Descriptor) -> int:
    """The flags word of Unicorn's TR/LDTR tuples: what QEMU's own ``ltr``/``lldt`` cache.

    That is the descriptor's high dword masked with 0x00F0FF00 (P is bit 15, the type bits
    8-11), not shifted; and a TSS is cached *available*: QEMU aborts the process (SIGABRT)
    when a stack switch finds TR not present or busy. tests/machine/test_cpu.py pins both.
    """
    flags = (d.raw >> 32) & 0x00F0FF00
    if d.system and d.type & 0x5 == 0x1:      # a TSS (types 1, 3, 9, 0xB): drop the busy bit
        flags &= ~(0x2 << 8)
    return flags
