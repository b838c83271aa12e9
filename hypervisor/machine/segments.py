"""Segmentation: from a segment register and an offset to a linear address (SDM Vol. 3, 3.4 and 5.3).

Every memory operand the CPU sees is an *effective address* (an offset) in a segment. The
CPU adds the base from the descriptor cache of the segment register and checks the offset
against the limit and the access against the type. Unicorn does that for guest code it
runs; the monitor must do it itself whenever it touches memory on the guest's behalf —
an emulated instruction's operand, the stack of an exception frame — or a guest with a
non-zero segment base would see the monitor read the wrong bytes. This file is that step,
as a pure function over a ``Segment``, the cached part of a segment register.

The checks are the SDM's (5.3 limit checking, 5.4-5.5 type checking):
* expand-up segments allow offsets 0..limit; an access of n bytes must end at or below
  the limit (a dword at limit-2 faults, even when the limit is 4 GiB - 1);
* expand-down data segments (type bit 2) allow offsets limit+1..0xFFFFFFFF (B=1) or
  ..0xFFFF (B=0);
* code segments can never be written and are readable only with the R bit; data
  segments are writable only with the W bit; a not-present (or null) segment allows nothing;
* a violation is #GP(0), or #SS(0) when the segment is SS (``stack=True``).

Where QEMU departs from this: QEMU's TCG (and so qemu-system-i386 and Unicorn) does not check
segment limits or types on ordinary data accesses at all; it adds the base and goes. A
monitor that must match the bare machine byte for byte on a guest that breaks a limit should
add ``seg.base`` itself; this function is what the architecture specifies.
"""
from __future__ import annotations

from dataclasses import dataclass

from .descriptors import Descriptor
from .faults import GP_VECTOR, SS_VECTOR, GuestFault

LINEAR_MASK = 0xFFFFFFFF

TYPE_ACCESSED = 0x1
TYPE_WRITABLE = 0x2          # data: W
TYPE_READABLE = 0x2          # code: R
TYPE_EXPAND_DOWN = 0x4       # data: E
TYPE_CONFORMING = 0x4        # code: C
TYPE_CODE = 0x8


@dataclass(frozen=True)
class Segment:
    """The hidden part of a segment register: what the CPU cached when the selector was loaded."""
    selector: int
    base: int
    limit: int          # in bytes, granularity applied
    type: int           # the descriptor's 4-bit type field (S=1 assumed: code or data)
    dpl: int
    present: bool
    big: bool           # D/B: 32-bit code, 32-bit stack pointer, 4 GiB expand-down bound

    @classmethod
    def from_descriptor(cls, selector: int, descriptor: Descriptor) -> "Segment":
        """The cache a load of ``selector`` fills from ``descriptor`` (a code or data one).

        A system descriptor (TSS, LDT, gate) is never loaded into a segment register; the
        caller must have refused it (#GP) before, so it is a ValueError here.
        """
        if descriptor.system:
            raise ValueError(f"selector {selector:#06x}: a system descriptor is not a segment")
        return cls(selector=selector, base=descriptor.base, limit=descriptor.limit,
                   type=descriptor.type, dpl=descriptor.dpl, present=descriptor.present,
                   big=descriptor.big)

    @classmethod
    def flat(cls, selector: int, *, code: bool = False, dpl: int = 0) -> "Segment":
        """A 4 GiB base-0 segment, as Multiboot leaves CS and DS (read/write data, or read/execute code)."""
        return cls(selector=selector, base=0, limit=LINEAR_MASK,
                   type=(TYPE_CODE | TYPE_READABLE) if code else TYPE_WRITABLE,
                   dpl=dpl, present=True, big=True)

    @property
    def is_code(self) -> bool:
        return bool(self.type & TYPE_CODE)

    @property
    def readable(self) -> bool:
        return not self.is_code or bool(self.type & TYPE_READABLE)

    @property
    def writable(self) -> bool:
        return not self.is_code and bool(self.type & TYPE_WRITABLE)

    @property
    def expand_down(self) -> bool:
        return not self.is_code and bool(self.type & TYPE_EXPAND_DOWN)


def linear_address(seg: Segment, offset: int, size: int, *, write: bool = False,
                   stack: bool = False) -> int:
    """``seg.base + offset`` (mod 4 GiB) after the limit and type checks; else #GP(0) / #SS(0).

    ``offset`` is the effective address as the instruction computed it (already cut to its
    address size); ``size`` is the number of bytes accessed (at least 1).
    """
    vector = SS_VECTOR if stack else GP_VECTOR
    name = "SS" if stack else f"segment {seg.selector:#06x}"
    if not seg.present:
        raise GuestFault(vector, 0, why=f"{name} is not usable")
    if write and not seg.writable:
        raise GuestFault(vector, 0, why=f"{name} is not writable")
    if not write and not seg.readable:
        raise GuestFault(vector, 0, why=f"{name} is execute-only")
    last = offset + max(size, 1) - 1
    if seg.expand_down:
        upper = LINEAR_MASK if seg.big else 0xFFFF
        if offset <= seg.limit or last > upper:
            raise GuestFault(vector, 0, why=f"offset {offset:#x}+{size} outside expand-down "
                                            f"{name} ({seg.limit:#x}, {upper:#x}]")
    elif last > seg.limit:
        raise GuestFault(vector, 0, why=f"offset {offset:#x}+{size} beyond the limit "
                                        f"{seg.limit:#x} of {name}")
    return (seg.base + offset) & LINEAR_MASK
