"""Linear addresses: the CPU's view of memory through segmentation's result and paging.

The monitor reads the guest's IDT, GDT, TSS and stacks by *linear* address. With
paging off that is the guest-physical address; with CR0.PG set (native guests only,
for now) this walks the guest's two-level 32-bit page tables, as the MMU would.
"""
from __future__ import annotations

from .memory import GuestMemory

CR0_PG = 1 << 31
PTE_P = 1
PDE_PS = 1 << 7
CR4_PSE = 1 << 4


class PageFault(Exception):
    def __init__(self, linear: int):
        super().__init__(f"linear {linear:#x} is not mapped")
        self.linear = linear


def walk(memory: GuestMemory, cr3: int, cr4: int, linear: int) -> int:
    """Translate a linear address through non-PAE page tables (pure over ``memory``)."""
    pde = memory.read_u32((cr3 & 0xFFFFF000) + ((linear >> 22) << 2))
    if not pde & PTE_P:
        raise PageFault(linear)
    if pde & PDE_PS and cr4 & CR4_PSE:
        return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
    pte = memory.read_u32((pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2))
    if not pte & PTE_P:
        raise PageFault(linear)
    return (pte & 0xFFFFF000) | (linear & 0xFFF)


class LinearMemory:
    """Reads and writes by linear address for a given (CR0, CR3, CR4)."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.cr0 = self.cr3 = self.cr4 = 0

    def set_control(self, cr0: int, cr3: int, cr4: int) -> None:
        self.cr0, self.cr3, self.cr4 = cr0, cr3, cr4

    def _spans(self, linear: int, length: int):
        while length:
            chunk = min(length, 0x1000 - (linear & 0xFFF))
            if self.cr0 & CR0_PG:
                yield walk(self.memory, self.cr3, self.cr4, linear), chunk
            else:
                yield linear & 0xFFFFFFFF, chunk
            linear += chunk
            length -= chunk

    def read(self, linear: int, length: int) -> bytes:
        if not self.cr0 & CR0_PG:
            return self.memory.read(linear, length)
        return b"".join(self.memory.read(pa, n) for pa, n in self._spans(linear, length))

    def write(self, linear: int, data: bytes) -> None:
        if not self.cr0 & CR0_PG:
            self.memory.write(linear, data)
            return
        done = 0
        for pa, n in list(self._spans(linear, len(data))):
            self.memory.write(pa, data[done:done + n])
            done += n
