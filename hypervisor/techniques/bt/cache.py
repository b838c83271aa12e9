"""The translation cache (TC): where translated blocks live, how they find each other, and when
they go.

The TC is one region of monitor memory that the CPU executes with its CS base pointing at it,
above 4 GiB (docs/architecture.md, "Binary translation"): a TC address is an EIP there. In a
32-bit code segment QEMU cuts every *data* address to 32 bits, so nothing, not the guest and not
the translated code itself, can read or write the TC; only the monitor writes it (``write``).
That is why everything the translated code needs from the cache is code.

Layout (offsets are TC addresses, EIPs):

* ``LOOKUP``: the indirect-branch lookup, entered with the guest target on top of the stack. It
  saves EAX, EFLAGS and ECX on the guest stack, hashes the target's low 12 bits and jumps into
  a bucket (``jmp ecx``: an indirect jump needs no data read);
* ``BUCKETS``: 4096 buckets of 32 bytes of code, each ``cmp eax, guest; jne miss; mov eax, tc;
  jmp HIT`` for the one block it holds, or a jump to MISS;
* ``HIT``: writes the block's TC address over the target, restores ECX, EFLAGS and EAX, and
  ``ret``\\ s into the block's indirect entry (which puts the guest target back in that slot);
* ``MISS``: an ``int3`` the monitor answers (the target is translated, its bucket filled);
* the blocks, each followed by one ``int3`` *exit stub* per guest target it jumps to that has no
  translation yet. When that translation appears, the jump is patched to it (chaining), and the
  stub is not reached again.

Full: every block and bucket is dropped at once (a flush), and translation starts again.
Invalidated (a write to a guest page it was read from): the block's entries become exit stubs
for its own guest address, every jump chained into it goes back to its exit stub, and its
bucket to MISS; its space is reclaimed at the next flush.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from .translator import ENTRY, Callout, TranslatedBlock

LOOKUP = 0x0000
HIT = 0x0040
MISS = 0x0060
BUCKETS = 0x1000
BUCKET_BITS = 12
BUCKET_SIZE = 32
BLOCKS = BUCKETS + (BUCKET_SIZE << BUCKET_BITS)
DEFAULT_SIZE = 16 << 20

# LOOKUP: [esp] = guest target. push eax; pushfd; push ecx; mov eax, [esp+12]; mov ecx, eax;
# and ecx, 0xfff; shl ecx, 5; add ecx, BUCKETS; jmp ecx
_LOOKUP_CODE = (b"\x50\x9c\x51\x8b\x44\x24\x0c\x89\xc1\x81\xe1\xff\x0f\x00\x00\xc1\xe1\x05"
                b"\x81\xc1" + struct.pack("<I", BUCKETS) + b"\xff\xe1")
# HIT: eax = the block's TC address. mov [esp+12], eax; pop ecx; popfd; pop eax; ret
_HIT_CODE = b"\x89\x44\x24\x0c\x59\x9d\x58\xc3"


def _rel32(at_field: int, target: int) -> bytes:
    """A rel32 field at ``at_field`` that jumps to ``target``."""
    return struct.pack("<i", target - (at_field + 4))


def _bucket_of(guest_eip: int) -> int:
    return BUCKETS + (guest_eip & ((1 << BUCKET_BITS) - 1)) * BUCKET_SIZE


def _empty_bucket(at: int) -> bytes:
    return (b"\xe9" + _rel32(at + 1, MISS)).ljust(BUCKET_SIZE, b"\xcc")


def _full_bucket(at: int, guest_eip: int, tc: int) -> bytes:
    code = (b"\x3d" + struct.pack("<I", guest_eip) + b"\x75\x0a" + b"\xb8" + struct.pack("<I", tc)
            + b"\xe9" + _rel32(at + 13, HIT) + b"\xe9" + _rel32(at + 18, MISS))
    return code.ljust(BUCKET_SIZE, b"\xcc")


@dataclass
class CacheStats:
    blocks_translated: int = 0
    guest_instructions_translated: int = 0
    tc_bytes: int = 0                     # bytes of blocks placed since the last flush
    chained: int = 0                      # direct jumps patched to go straight to their target
    lookup_misses: int = 0
    invalidations: int = 0                # blocks dropped because their guest bytes changed
    flushes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _Placed:
    block: TranslatedBlock
    start: int                            # TC address of its indirect entry
    end: int                              # after its exit stubs
    stubs: dict[int, int] = field(default_factory=dict)   # exit stub TC address -> guest target
    alive: bool = True


class TranslationCache:
    """The TC of one virtual CPU. ``write(tc_address, data)`` is how bytes reach the memory the
    CPU executes (the caller also drops what QEMU translated from them)."""

    def __init__(self, write, size: int = DEFAULT_SIZE):
        if size <= BLOCKS:
            raise ValueError(f"a TC of {size} bytes has no room for blocks")
        self.size = size
        self._write = write
        self.stats = CacheStats()
        self._reset()

    def _reset(self) -> None:
        self._free = BLOCKS
        self._blocks: dict[int, _Placed] = {}          # guest EIP -> its live block
        self._starts: list[int] = []                   # TC starts of every placed block, sorted
        self._placed: dict[int, _Placed] = {}          # TC start -> block
        self._pending: dict[int, list[int]] = {}       # guest target -> rel32 fields aimed at stubs
        self._incoming: dict[int, list[int]] = {}      # guest target -> rel32 fields chained to it
        self._callouts: dict[int, Callout] = {}        # TC address of an int3 -> its callout
        self._stubs: dict[int, int] = {}               # TC address of an exit stub -> guest target
        self._write(LOOKUP, _LOOKUP_CODE)
        self._write(HIT, _HIT_CODE)
        self._write(MISS, b"\xcc")
        self._write(BUCKETS, b"".join(_empty_bucket(BUCKETS + i * BUCKET_SIZE) for i in range(1 << BUCKET_BITS)))
        self.stats.tc_bytes = 0

    # -- finding things ------------------------------------------------------------------------
    def lookup(self, guest_eip: int) -> int | None:
        """The TC address of the direct entry of ``guest_eip``'s block, or None."""
        placed = self._blocks.get(guest_eip)
        return placed.start + ENTRY if placed is not None else None

    def callout_at(self, tc: int) -> Callout | None:
        return self._callouts.get(tc)

    def exit_stub_target(self, tc: int) -> int | None:
        """The guest target of the exit stub at ``tc`` (an untranslated successor), or None."""
        return self._stubs.get(tc)

    def block_at(self, tc: int) -> tuple[TranslatedBlock, int] | None:
        """The block holding TC address ``tc`` (dead or alive) and the offset in it, or None."""
        i = bisect.bisect_right(self._starts, tc) - 1
        if i < 0:
            return None
        placed = self._placed[self._starts[i]]
        return (placed.block, tc - placed.start) if tc < placed.end else None

    # -- placing blocks -----------------------------------------------------------------------
    def add(self, block: TranslatedBlock) -> int:
        """Place a translated block (flushing the cache first if it is full); its direct entry."""
        size = len(block.code) + len({target for _, target in block.exits})
        if self._free + size > self.size:
            self.flush()
        if self._free + size > self.size:
            raise ValueError(f"a block of {size} bytes does not fit in a TC of {self.size}")
        start = self._free
        self._free += size
        old = self._blocks.get(block.guest_eip)
        if old is not None:
            self._kill(old)
        placed = _Placed(block, start, start + size)
        block.tc = start
        code = bytearray(block.code)
        stub_at: dict[int, int] = {}
        stub = start + len(block.code)
        for field_at, target in block.exits:
            if target not in stub_at:
                stub_at[target] = stub
                placed.stubs[stub] = target
                self._stubs[stub] = target
                stub += 1
        for field_at, target in block.exits:
            live = self._blocks.get(target)
            if live is not None:
                code[field_at:field_at + 4] = _rel32(start + field_at, live.start + ENTRY)
                self._incoming.setdefault(target, []).append(start + field_at)
                self.stats.chained += 1
            else:
                code[field_at:field_at + 4] = _rel32(start + field_at, stub_at[target])
                self._pending.setdefault(target, []).append(start + field_at)
        for field_at in block.lookups:
            code[field_at:field_at + 4] = _rel32(start + field_at, LOOKUP)
        for offset, callout in block.callouts.items():
            self._callouts[start + offset] = callout
        self._write(start, bytes(code) + b"\xcc" * len(stub_at))
        self._blocks[block.guest_eip] = placed
        bisect.insort(self._starts, start)
        self._placed[start] = placed
        self.stats.blocks_translated += 1
        self.stats.guest_instructions_translated += block.instructions
        self.stats.tc_bytes += size
        self._chain_to(block.guest_eip, start + ENTRY)
        at = _bucket_of(block.guest_eip)
        self._write(at, _full_bucket(at, block.guest_eip, start))
        return start + ENTRY

    def _chain_to(self, guest_eip: int, entry: int) -> None:
        """Patch every jump waiting (at an exit stub) for ``guest_eip`` to go straight to ``entry``."""
        for field_at in self._pending.pop(guest_eip, []):
            self._write(field_at, _rel32(field_at, entry))
            self._incoming.setdefault(guest_eip, []).append(field_at)
            self.stats.chained += 1

    def missed(self) -> None:
        """The lookup stub missed (the monitor answers it and places the target's block)."""
        self.stats.lookup_misses += 1

    # -- dropping blocks ------------------------------------------------------------------------
    def invalidate_page(self, page: int) -> int:
        """Guest bytes in ``page`` changed: drop every live block read from it. How many went."""
        dead = [p for p in self._blocks.values() if page in p.block.pages]
        for placed in dead:
            self._kill(placed)
        self.stats.invalidations += len(dead)
        return len(dead)

    def _kill(self, placed: _Placed) -> None:
        """Unlink a block: jumps chained to it go back to their exit stubs, its bucket to MISS, and
        its own entries become a jump to an exit stub for its guest address."""
        guest = placed.block.guest_eip
        placed.alive = False
        del self._blocks[guest]
        for field_at in self._incoming.pop(guest, []):
            owner = self._placed[self._starts[bisect.bisect_right(self._starts, field_at) - 1]]
            stub = next((s for s, t in owner.stubs.items() if t == guest), None)
            if stub is None:
                continue                     # its owner was itself flushed or killed
            self._write(field_at, _rel32(field_at, stub))
            self._pending.setdefault(guest, []).append(field_at)
        at = _bucket_of(guest)
        self._write(at, _empty_bucket(at))
        # Anything still in the dead block (a return into it cannot be: returns go through the
        # lookup) finds an int3 at each entry, answered as a lookup of its guest address.
        self._write(placed.start, b"\xcc" * ENTRY + b"\xcc")
        self._stubs[placed.start] = guest
        self._stubs[placed.start + ENTRY] = guest

    def flush(self) -> None:
        """Drop everything: every block, bucket and chain (the cache is full, or its guest
        addresses no longer mean what they did: a CR3 load, a mode change)."""
        self.stats.flushes += 1
        self._reset()
