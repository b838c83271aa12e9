"""Machine memory as a frame table, and each domain's view of it through its P2M.

Xen has three kinds of address, and so does this project. The machine owns one host
buffer cut into 4 KiB *machine frames* (mfn). A domain does not get a slice of it at
address 0: it gets frames from wherever the pool has them, and its *pseudo-physical*
address space (pfn, what the guest believes is physical) is stitched together from
them by a P2M table. The machine keeps the inverse, the M2P. That is why a guest's
"physical" address 0x100000 is, here too, not machine address 0x100000.

Nothing in Unicorn or the host keeps any of this. Unicorn maps whatever host memory it
is given at whatever guest address it is told (``mem_map_ptr``) and never asks who owns
it; Python's mmap knows bytes, not frames. So this file must:

* keep, per machine frame, what Xen keeps in its ``struct page_info`` (xen/include/asm-x86/
  mm.h): the owning domain, the frame's *type* (ordinary writable RAM, a page table of
  level n, a descriptor table, granted), a *type count* (how many uses pin it as that
  type: a frame in use as a page table must not also be mapped writable), a general
  *reference count* (mappings and uses from outside its owner, such as another domain's
  grant mapping), and a write-protect flag (shadow paging and PV page tables trap writes
  to frames the guest uses as page tables). A frame still referenced when its domain
  dies is not reused: it stays owned, marked dying, until the last reference is dropped;
  only then is it zeroed and returned, so no frame is ever handed out twice.
  These are parallel arrays indexed by mfn (a 3 GiB machine has 786,432 frames; a Python
  object per frame would cost more than the frames' bookkeeping is worth).
* route every read and write a monitor makes on a guest's behalf through the P2M, page
  by page, because two guest-physical pages that are neighbours need not be neighbours
  in machine memory. An access outside the guest's RAM raises ``BusError``.
* hand RAM out in whole 2 MiB *extents* where it can, top-down: Unicorn slows badly with
  thousands of memory regions (UNICORN.md: 16,384 regions of 4 KiB never finished
  mapping), so a domain's RAM must be a few long runs of contiguous machine frames, each
  mapped with one ``mem_map_ptr``. The P2M is still per frame: grant mappings,
  ballooning and page-table frames all talk in frames.

Xen's rules that are *not* enforced here, because nothing above uses them yet: a frame's
type is validated by whoever sets it (PV ``mmu_update`` will check a page table's
entries before taking a PAGE_TABLE_L2 reference), and a frame with a page-table type
reference is not refused a writable mapping by this table: the caller asks
``type_of``/``get_type_ref`` first.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from array import array
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Iterator

from .faults import BusError

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1
EXTENT_FRAMES = 512          # 2 MiB

_NO_OWNER = -1               # owner array value of a free frame
_NO_PFN = -1                 # M2P value of a frame that backs no pseudo-physical page
_WRITE_PROTECTED = 1         # bits of the per-frame flag byte
_DYING = 2                   # released while still referenced: freed by the last put_ref
SHADOWED = 4                 # a guest page table a cached shadow mirrors (Xen's PGC_page_table):
                             # set and cleared by the shadow itself (machine/native/tlbfill.c)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class OutOfMachineMemory(Exception):
    """The pool has fewer free frames than a domain asked for."""


class FrameError(Exception):
    """A frame-table operation the frame's state does not allow (the caller's bug or a guest's
    request that must be refused): a free frame's reference, a type clash, a double free."""


class FrameType(IntEnum):
    """What a machine frame is used as, numbered as Xen's PGT_* page types (mm.h).

    A frame's type may change only while its type count is zero: a frame pinned as a
    page table cannot become writable RAM behind the validator's back.
    """
    FREE = 0                 # PGT_none, and the frame belongs to no one
    PAGE_TABLE_L1 = 1        # PGT_l1_page_table
    PAGE_TABLE_L2 = 2        # PGT_l2_page_table
    PAGE_TABLE_L3 = 3        # PGT_l3_page_table
    PAGE_TABLE_L4 = 4        # PGT_l4_page_table
    DESCRIPTOR_TABLE = 5     # PGT_seg_desc_page: part of a GDT or LDT
    WRITABLE = 7             # PGT_writable_page: ordinary RAM, every frame's type when allocated
    GRANTED = 8              # no PGT_ twin (Xen tracks grants in the grant table): mapped by
                             # another domain through a grant


@dataclass(frozen=True)
class Extent:
    """A run of pseudo-physical frames backed by contiguous machine frames."""
    pfn: int
    mfn: int
    frames: int


class MachineMemory:
    """The host's RAM for all domains: one buffer, and the frame table that says who owns what.

    ``extent_frames`` is the allocation grain (2 MiB); tests pass a few frames to get
    fragmentation in a small machine.
    """

    def __init__(self, size_bytes: int, extent_frames: int = EXTENT_FRAMES):
        if size_bytes <= 0 or size_bytes % PAGE_SIZE:
            raise ValueError("machine memory must be a positive whole number of frames")
        if extent_frames <= 0:
            raise ValueError("an extent holds at least one frame")
        self.size = size_bytes
        self.frames = size_bytes // PAGE_SIZE
        self.extent_frames = extent_frames
        # Private and anonymous, so that a released frame can be handed back to the host
        # (MADV_DONTNEED) and reads as zeros: zeroing a 3 GiB machine by writing would
        # touch, and so allocate, every page of it.
        self.buffer = mmap.mmap(-1, size_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.base_address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self.view = memoryview(self.buffer)
        n = self.frames
        self._owner = array("i", [_NO_OWNER]) * n
        self._type = bytearray(n)                       # FrameType values; FREE is 0
        self._type_count = array("I", [0]) * n
        self._ref_count = array("I", [0]) * n
        self._flags = bytearray(n)
        self._m2p = array("i", [_NO_PFN]) * n
        extents = -(-n // extent_frames)
        # Free frames per extent, so allocation finds whole free extents without a scan.
        self._free_in_extent = array("I", (self._extent_length(e) for e in range(extents)))
        self._free = n

    # == the pool ==========================================================================
    @property
    def free_frames(self) -> int:
        """How many frames belong to no one (dying frames are still owned)."""
        return self._free

    def allocate(self, owner: int, frames: int) -> list[int]:
        """Give ``owner`` ``frames`` free frames; the list is in the order the caller's pfns use.

        Whole free extents come first, from the top of the machine down (so a domain's
        RAM is a few runs of 2 MiB, one Unicorn region each); a remainder smaller than an
        extent goes into the partly used extent it fits best, keeping whole extents whole;
        only when neither is enough are the last free frames gathered one by one. A
        domain's frame 0 is never machine frame 0, so code that mixes up pfns and mfns
        cannot pass by accident. Every frame comes back WRITABLE, unreferenced, zeroed.
        """
        if not isinstance(owner, int) or owner < 0:
            raise ValueError(f"owner {owner!r}: a domain id is an int >= 0")
        if frames <= 0:
            raise ValueError(f"{frames} frames: a domain gets at least one")
        if frames > self._free:
            raise OutOfMachineMemory(f"{frames} frames asked, {self._free} free")
        chosen = self._choose(frames)
        if chosen[0] == 0:
            chosen = self._avoid_frame_zero(chosen)
        owner_of, type_of = self._owner, self._type
        writable = FrameType.WRITABLE
        for mfn in chosen:
            owner_of[mfn] = owner
            type_of[mfn] = writable
            self._free_in_extent[mfn // self.extent_frames] -= 1
        self._free -= len(chosen)
        return chosen

    def _extent_length(self, extent: int) -> int:
        first = extent * self.extent_frames
        return min(self.extent_frames, self.frames - first)

    def _free_frames_in(self, extent: int) -> list[int]:
        first = extent * self.extent_frames
        owner = self._owner
        return [m for m in range(first, first + self._extent_length(extent)) if owner[m] == _NO_OWNER]

    def _choose(self, frames: int) -> list[int]:
        grain, free_in = self.extent_frames, self._free_in_extent
        extents = range(len(free_in) - 1, -1, -1)            # top-down
        chosen: list[int] = []
        whole = [e for e in extents if free_in[e] == grain]
        for e in whole[:frames // grain]:
            chosen.extend(range(e * grain, (e + 1) * grain))
        need = frames - len(chosen)
        if not need:
            return chosen
        taken = {m // grain for m in chosen[::grain]}
        # The remainder: the extent with the fewest free frames that still holds it all.
        fits = [e for e in extents if e not in taken and need <= free_in[e]]
        if fits:
            best = min(fits, key=lambda e: (free_in[e], -e))
            chosen.extend(self._free_frames_in(best)[-need:])
            return chosen
        for e in extents:                                    # gather what is left
            if e in taken or not free_in[e]:
                continue
            chosen.extend(self._free_frames_in(e)[-need:])
            need = frames - len(chosen)
            if not need:
                break
        return chosen

    def _avoid_frame_zero(self, chosen: list[int]) -> list[int]:
        if len(chosen) > 1:
            return chosen[1:] + chosen[:1]
        spare = next((m for m in range(1, self.frames) if self._owner[m] == _NO_OWNER), None)
        if spare is None:
            raise OutOfMachineMemory("only machine frame 0 is free, and it is never a domain's frame 0")
        return [spare]

    def release(self, mfns: Iterable[int]) -> int:
        """Give these frames back; returns how many went back to the pool at once.

        A frame someone else still references (``get_ref``) is marked dying instead and
        freed, zeroed, by the ``put_ref`` that drops the last reference. Releasing a frame
        that is free, or already dying, is a FrameError: that would be a double free.
        """
        mfns = list(mfns)
        seen: set[int] = set()
        for mfn in mfns:                     # check them all before changing any
            self._check(mfn)
            if mfn in seen or self._owner[mfn] == _NO_OWNER or self._flags[mfn] & _DYING:
                raise FrameError(f"machine frame {mfn:#x} is released twice")
            seen.add(mfn)
        freed = []
        for mfn in mfns:
            self._m2p[mfn] = _NO_PFN
            if self._ref_count[mfn]:
                self._flags[mfn] |= _DYING
            else:
                freed.append(mfn)
        self._free_now(freed)
        return len(freed)

    def release_domain(self, owner: int) -> int:
        """Every frame ``owner`` has goes back (see ``release``); returns how many went at once.

        The domain's own uses of its frames die with it: type counts held by a frame
        nobody else references are dropped. Frames another domain still references stay
        dying, owned by ``owner``, until their last ``put_ref``.
        """
        return self.release(m for m in self.frames_of(owner) if not self._flags[m] & _DYING)

    def _free_now(self, mfns: list[int]) -> None:
        if not mfns:
            return
        owner, kind, tcount, flags = self._owner, self._type, self._type_count, self._flags
        grain = self.extent_frames
        for mfn in mfns:
            owner[mfn] = _NO_OWNER
            kind[mfn] = FrameType.FREE
            tcount[mfn] = 0
            flags[mfn] = 0
            self._free_in_extent[mfn // grain] += 1
        self._free += len(mfns)
        for first, count in _runs(sorted(mfns)):
            self._zero(first, count)

    def _zero(self, first: int, count: int) -> None:
        try:
            self.buffer.madvise(mmap.MADV_DONTNEED, first * PAGE_SIZE, count * PAGE_SIZE)
        except (AttributeError, OSError):        # no madvise on this host: write the zeros
            ctypes.memset(self.base_address + first * PAGE_SIZE, 0, count * PAGE_SIZE)

    def frames_of(self, owner: int) -> list[int]:
        """The machine frames ``owner`` holds, dying ones included, in mfn order (a scan)."""
        return [m for m, o in enumerate(self._owner) if o == owner]

    # == one frame =========================================================================
    def _check(self, mfn: int) -> None:
        if not 0 <= mfn < self.frames:
            raise FrameError(f"machine frame {mfn:#x} does not exist ({self.frames} frames)")

    def _owned(self, mfn: int) -> None:
        self._check(mfn)
        if self._owner[mfn] == _NO_OWNER:
            raise FrameError(f"machine frame {mfn:#x} is free")

    def owner_of(self, mfn: int) -> int | None:
        """The domain that owns the frame, or None if it is free."""
        self._check(mfn)
        owner = self._owner[mfn]
        return None if owner == _NO_OWNER else owner

    def is_dying(self, mfn: int) -> bool:
        """Released by its owner but still referenced: owned, yet never handed out again."""
        self._check(mfn)
        return bool(self._flags[mfn] & _DYING)

    def type_of(self, mfn: int) -> FrameType:
        self._check(mfn)
        return FrameType(self._type[mfn])

    def type_count(self, mfn: int) -> int:
        self._check(mfn)
        return self._type_count[mfn]

    def set_type(self, mfn: int, frame_type: FrameType) -> None:
        """Retype an owned frame; refused while uses of its current type are counted."""
        self._owned(mfn)
        frame_type = FrameType(frame_type)
        if frame_type is FrameType.FREE:
            raise FrameError("a frame becomes FREE only by being released")
        current = self._type[mfn]
        if current != frame_type and self._type_count[mfn]:
            raise FrameError(f"machine frame {mfn:#x} is in use as {FrameType(current).name} "
                             f"({self._type_count[mfn]} uses); it cannot become {frame_type.name}")
        self._type[mfn] = frame_type

    def get_type_ref(self, mfn: int, frame_type: FrameType) -> int:
        """Count one more use of the frame as ``frame_type`` (Xen's get_page_type).

        An unused frame takes the type; a frame in use as another type refuses. Returns
        the new type count.
        """
        self.set_type(mfn, frame_type)
        self._type_count[mfn] += 1
        return self._type_count[mfn]

    def put_type_ref(self, mfn: int) -> int:
        """Drop one use of the frame's type; at zero the frame may be retyped. Returns the count."""
        self._owned(mfn)
        if not self._type_count[mfn]:
            raise FrameError(f"machine frame {mfn:#x} has no type use to drop")
        self._type_count[mfn] -= 1
        return self._type_count[mfn]

    def ref_count(self, mfn: int) -> int:
        self._check(mfn)
        return self._ref_count[mfn]

    def get_ref(self, mfn: int) -> int:
        """Take a general reference on an owned, live frame (Xen's get_page). Returns the count."""
        self._owned(mfn)
        if self._flags[mfn] & _DYING:
            raise FrameError(f"machine frame {mfn:#x} belongs to a dying domain")
        self._ref_count[mfn] += 1
        return self._ref_count[mfn]

    def put_ref(self, mfn: int) -> int:
        """Drop a general reference; the last one on a dying frame frees it. Returns the count."""
        self._owned(mfn)
        if not self._ref_count[mfn]:
            raise FrameError(f"machine frame {mfn:#x} has no reference to drop")
        self._ref_count[mfn] -= 1
        if not self._ref_count[mfn] and self._flags[mfn] & _DYING:
            self._free_now([mfn])
        return self._ref_count[mfn]

    def set_write_protected(self, mfn: int, flag: bool) -> None:
        """Mark an owned frame as one whose guest writes must trap (a page table, a GDT)."""
        self._owned(mfn)
        if flag:
            self._flags[mfn] |= _WRITE_PROTECTED
        else:
            self._flags[mfn] &= ~_WRITE_PROTECTED

    def is_write_protected(self, mfn: int) -> bool:
        """Must the guest's writes to this frame trap: a monitor's table, or a shadowed page table?"""
        self._check(mfn)
        return bool(self._flags[mfn] & (_WRITE_PROTECTED | SHADOWED))

    @property
    def flags_address(self) -> int:
        """The frame table's flag bytes, one per machine frame, for the C shadow (``SHADOWED``)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self._flags))

    # == the M2P ===========================================================================
    def m2p(self, mfn: int) -> int | None:
        """The pseudo-physical frame this machine frame backs in its owner, or None."""
        self._check(mfn)
        pfn = self._m2p[mfn]
        return None if pfn == _NO_PFN else pfn

    def set_m2p(self, mfn: int, pfn: int | None) -> None:
        """Record (or, with None, forget) which pfn of its owner an owned frame backs."""
        self._owned(mfn)
        if pfn is not None and pfn < 0:
            raise ValueError(f"pfn {pfn} is negative")
        self._m2p[mfn] = _NO_PFN if pfn is None else pfn


def _runs(mfns: list[int]) -> Iterator[tuple[int, int]]:
    """(first, count) for each run of consecutive numbers in a list, in list order."""
    if not mfns:
        return
    first = prev = mfns[0]
    for m in mfns[1:]:
        if m != prev + 1:
            yield first, prev - first + 1
            first = m
        prev = m
    yield first, prev - first + 1


class GuestMemory:
    """A domain's pseudo-physical RAM: its P2M, and every guest-physical access through it.

    Reads and writes look up each page in the P2M; an access inside one page, by far the
    commonest, is one slice of the machine buffer. Raises ``BusError`` outside RAM.
    """

    def __init__(self, machine: MachineMemory, size_bytes: int, owner: int = 0):
        if size_bytes <= 0 or size_bytes % PAGE_SIZE:
            raise ValueError(f"guest RAM must be a positive multiple of {PAGE_SIZE} bytes")
        self.machine = machine
        self.owner = owner
        self.p2m: list[int] = machine.allocate(owner, size_bytes // PAGE_SIZE)
        self.size = size_bytes
        for pfn, mfn in enumerate(self.p2m):
            machine.set_m2p(mfn, pfn)
        self._buffer = machine.buffer
        # Told of every write made here (the monitor's, a device's), after it lands: a shadow
        # built from those bytes must follow (machine/native/tlbfill.py ``guest_wrote``).
        self.on_write = None

    # -- where things are -----------------------------------------------------------------
    def contains(self, paddr: int, length: int = 1) -> bool:
        return 0 <= paddr and 0 <= length and paddr + length <= self.size

    def machine_address(self, paddr: int) -> int:
        """Guest-physical -> machine address (P2M lookup); BusError outside RAM."""
        if not 0 <= paddr < self.size:
            raise BusError(paddr, 1)
        return self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | (paddr & PAGE_MASK)

    def runs(self) -> list[Extent]:
        """The P2M as maximal runs of contiguous machine frames, in pfn order."""
        out: list[Extent] = []
        pfn = 0
        for mfn, frames in _runs(self.p2m):
            out.append(Extent(pfn, mfn, frames))
            pfn += frames
        return out

    def spans(self, paddr: int, length: int) -> Iterator[tuple[int, int]]:
        """(machine byte offset, byte count) pieces of a guest-physical range, page by page
        through the P2M, merged where the machine frames happen to be contiguous."""
        if not self.contains(paddr, length):
            raise BusError(paddr, length)
        if not length:
            return
        p2m = self.p2m
        pfn, offset = paddr >> PAGE_SHIFT, paddr & PAGE_MASK
        start = p2m[pfn] << PAGE_SHIFT | offset
        count = min(length, PAGE_SIZE - offset)
        left = length - count
        while left:
            pfn += 1
            chunk = min(left, PAGE_SIZE)
            at = p2m[pfn] << PAGE_SHIFT
            if at == start + count:
                count += chunk
            else:
                yield start, count
                start, count = at, chunk
            left -= chunk
        yield start, count

    def map_into(self, uc, perms: int) -> None:
        """Map the RAM into a Unicorn instance over the machine frames themselves, one
        region per run of contiguous frames."""
        base = self.machine.base_address
        for run in self.runs():
            uc.mem_map_ptr(run.pfn << PAGE_SHIFT, run.frames << PAGE_SHIFT, perms,
                           base + (run.mfn << PAGE_SHIFT))

    # -- access ---------------------------------------------------------------------------
    def read(self, paddr: int, length: int) -> bytes:
        """Bytes at a guest-physical address (BusError outside RAM)."""
        offset = paddr & PAGE_MASK
        if 0 < length <= PAGE_SIZE - offset and 0 <= paddr and paddr + length <= self.size:
            at = self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | offset
            return self._buffer[at:at + length]
        buffer = self._buffer
        return b"".join([buffer[at:at + n] for at, n in self.spans(paddr, length)])

    def write(self, paddr: int, data: bytes | bytearray | memoryview) -> None:
        """Store bytes at a guest-physical address (BusError outside RAM, nothing written)."""
        length = len(data)
        offset = paddr & PAGE_MASK
        if 0 < length <= PAGE_SIZE - offset and 0 <= paddr and paddr + length <= self.size:
            at = self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | offset
            self._buffer[at:at + length] = data
        else:
            source = memoryview(data).cast("B")
            buffer, done = self._buffer, 0
            for at, n in list(self.spans(paddr, length)):
                buffer[at:at + n] = source[done:done + n]
                done += n
        if self.on_write is not None:
            self.on_write(paddr, length)

    def read_u32(self, paddr: int) -> int:
        offset = paddr & PAGE_MASK
        if offset <= PAGE_SIZE - 4 and 0 <= paddr and paddr + 4 <= self.size:
            return _U32.unpack_from(self._buffer, self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | offset)[0]
        return int.from_bytes(self.read(paddr, 4), "little")

    def read_u64(self, paddr: int) -> int:
        offset = paddr & PAGE_MASK
        if offset <= PAGE_SIZE - 8 and 0 <= paddr and paddr + 8 <= self.size:
            return _U64.unpack_from(self._buffer, self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | offset)[0]
        return int.from_bytes(self.read(paddr, 8), "little")

    def write_u32(self, paddr: int, value: int) -> None:
        self.write(paddr, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def release(self) -> None:
        """Give every frame back to the machine; the memory is then empty."""
        self.machine.release(self.p2m)
        self.p2m = []
        self.size = 0
