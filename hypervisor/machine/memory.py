"""Machine memory, and each domain's view of it: the first of Xen's three levels of addresses.

The machine owns one host buffer cut into 4 KiB *machine frames*. A domain does not
get a slice of it at address 0: it gets frames from wherever the pool has them, and
its *pseudo-physical* address space is stitched together from them by a P2M table
(pseudo-physical frame -> machine frame). That is the arrangement Xen uses, and it is
why a guest's "physical" address 0x100000 is, here too, not machine address 0x100000.

Unicorn slows down badly with thousands of memory regions (see UNICORN.md), so RAM is
handed out and mapped in large *extents* (2 MiB by default); the P2M is still kept per
frame so that later work (grant mappings, migration, ballooning) can talk in frames.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

PAGE_SIZE = 4096
PAGE_SHIFT = 12
EXTENT_FRAMES = 512          # 2 MiB


class OutOfMachineMemory(Exception):
    pass


class MachineMemory:
    """The host's RAM for all domains: one buffer, a pool of machine frames."""

    def __init__(self, size_bytes: int):
        if size_bytes % PAGE_SIZE:
            raise ValueError("machine memory must be a whole number of frames")
        self.size = size_bytes
        self._buffer = mmap.mmap(-1, size_bytes)
        self.base_address = ctypes.addressof(ctypes.c_char.from_buffer(self._buffer))
        self.view = memoryview(self._buffer)
        self.frames = size_bytes // PAGE_SIZE
        # Free extents, handed out from the top of the machine down: a domain's
        # pseudo-physical frame 0 is never machine frame 0.
        self._free_extents = list(range(0, self.frames, EXTENT_FRAMES))

    def allocate_extents(self, frames: int) -> list[int]:
        """Machine frame numbers for ``frames`` frames, in whole extents."""
        needed = -(-frames // EXTENT_FRAMES)
        if needed > len(self._free_extents):
            raise OutOfMachineMemory(f"{frames} frames asked, {len(self._free_extents) * EXTENT_FRAMES} free")
        taken = [self._free_extents.pop() for _ in range(needed)]
        return [first + i for first in taken for i in range(EXTENT_FRAMES)][:frames]

    def release(self, mfns: list[int]) -> None:
        heads = sorted({m - m % EXTENT_FRAMES for m in mfns})
        for head in heads:
            self.view[head * PAGE_SIZE:(head + EXTENT_FRAMES) * PAGE_SIZE] = bytes(EXTENT_FRAMES * PAGE_SIZE)
        self._free_extents.extend(heads)


@dataclass(frozen=True)
class Extent:
    """A run of pseudo-physical frames backed by contiguous machine frames."""
    pfn: int
    mfn: int
    frames: int


class GuestMemory:
    """A domain's pseudo-physical RAM: the P2M table and fast access by guest-physical address."""

    def __init__(self, machine: MachineMemory, size_bytes: int):
        if size_bytes <= 0 or size_bytes % (EXTENT_FRAMES * PAGE_SIZE):
            raise ValueError(f"guest RAM must be a positive multiple of {EXTENT_FRAMES * PAGE_SIZE >> 20} MiB")
        self.machine = machine
        self.size = size_bytes
        self.p2m = machine.allocate_extents(size_bytes // PAGE_SIZE)
        self.extents = self._coalesce()
        # Byte offset into the machine buffer of each pseudo-physical extent, for reads.
        self._extent_bytes = EXTENT_FRAMES * PAGE_SIZE
        self._extent_offset = [e.mfn * PAGE_SIZE for e in self.extents]

    def _coalesce(self) -> list[Extent]:
        extents: list[Extent] = []
        for pfn, mfn in enumerate(self.p2m):
            last = extents[-1] if extents else None
            if last and last.pfn + last.frames == pfn and last.mfn + last.frames == mfn:
                extents[-1] = Extent(last.pfn, last.mfn, last.frames + 1)
            else:
                extents.append(Extent(pfn, mfn, 1))
        return extents

    def machine_address(self, paddr: int) -> int:
        """Guest-physical -> machine address (P2M lookup)."""
        return self.p2m[paddr >> PAGE_SHIFT] << PAGE_SHIFT | (paddr & (PAGE_SIZE - 1))

    def map_into(self, uc, perms: int) -> None:
        """Map every extent into a Unicorn instance over the machine frames themselves."""
        for e in self.extents:
            uc.mem_map_ptr(e.pfn * PAGE_SIZE, e.frames * PAGE_SIZE, perms,
                           self.machine.base_address + e.mfn * PAGE_SIZE)

    def contains(self, paddr: int, length: int = 1) -> bool:
        return 0 <= paddr and paddr + length <= self.size

    def read(self, paddr: int, length: int) -> bytes:
        """Bytes at a guest-physical address (raises IndexError outside RAM)."""
        if not self.contains(paddr, length):
            raise IndexError(f"guest-physical {paddr:#x}+{length} is outside RAM")
        out = bytearray()
        view = self.machine.view
        while length:
            index, offset = divmod(paddr, self._extent_bytes)
            chunk = min(length, self._extent_bytes - offset)
            start = self._extent_offset[index] + offset
            out += view[start:start + chunk]
            paddr += chunk
            length -= chunk
        return bytes(out)

    def write(self, paddr: int, data: bytes) -> None:
        if not self.contains(paddr, len(data)):
            raise IndexError(f"guest-physical {paddr:#x}+{len(data)} is outside RAM")
        view = self.machine.view
        done = 0
        while done < len(data):
            index, offset = divmod(paddr + done, self._extent_bytes)
            chunk = min(len(data) - done, self._extent_bytes - offset)
            start = self._extent_offset[index] + offset
            view[start:start + chunk] = data[done:done + chunk]
            done += chunk

    def read_u32(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 4), "little")

    def write_u32(self, paddr: int, value: int) -> None:
        self.write(paddr, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def release(self) -> None:
        self.machine.release(self.p2m)
        self.p2m = []
