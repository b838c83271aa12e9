"""EPT: guest-physical → machine, under the monitor's control (the hvm technique).

With VT-x's extended page tables the guest keeps its own page tables and its own CR3; the
CPU walks them to get a *guest-physical* address, and then a second set of tables, the
monitor's, to get the machine address. Every guest-physical access, the walk's own reads of
the guest's tables included, must be allowed by the EPT: read, write and execute rights per
guest page. An access the EPT does not allow is an *EPT violation*, a VM exit whose
qualification says what the access was, what the entry allowed, and whether a guest-linear
address was being translated.

hvsim's EPT is one byte of rights per 4 KiB guest-physical page below 4 GiB (``rights``),
read by the C TLB fill in mode EPT (``machine/native/tlbfill.c``), which does the guest's
walk and this check on every TLB miss. The frames behind the pages are the P2M's
(``machine/memory.py``): Unicorn's memory map sends guest-physical page n to machine frame
p2m[n], and nothing maps a frame of another domain, so a guest can reach no frame that is
not in its EPT. Pages a device decodes are marked MMIO: their accesses reach the device
model (what a real monitor's EPT misconfiguration exit does, in one step).

Two uses of the rights beyond "RAM is read-write-execute":
* a page with no rights at all: the guest touches memory that is not its own, an EPT
  violation the monitor reports (a hostile guest, shown by the tests);
* a page without write: dirty logging (``start_dirty_log``). The first write to each page
  is an EPT violation; the monitor notes the page dirty, gives write back and lets the
  instruction run again. Live migration will copy what this reports.
"""
from __future__ import annotations

import ctypes

from ..machine.native.tlbfill import EPT_MMIO, EPT_R, EPT_W, EPT_X, FRAMES_4G

EPT_RWX = EPT_R | EPT_W | EPT_X
PAGE_SHIFT = 12


class Ept:
    """The rights of every guest-physical page below 4 GiB, and the dirty log."""

    def __init__(self, ram_pages: int):
        self.rights = (ctypes.c_uint8 * FRAMES_4G)()
        self.ram_pages = min(ram_pages, FRAMES_4G)
        ctypes.memset(self.rights, EPT_RWX, self.ram_pages)
        self.dirty: set[int] | None = None        # pages written since start_dirty_log; None: not logging
        self.on_change = lambda: None              # the fill's TLB must forget rights it has seen

    def map_mmio(self, base: int, size: int) -> None:
        """Pages a device decodes: accesses reach its model."""
        for page in range(base >> PAGE_SHIFT, (base + size + 0xFFF) >> PAGE_SHIFT):
            if page < FRAMES_4G:
                self.rights[page] = EPT_MMIO

    def unmap(self, page: int) -> None:
        """Take a page away from the guest: any access is an EPT violation."""
        self.rights[page] = 0
        self.on_change()

    # -- dirty logging --------------------------------------------------------------------
    def start_dirty_log(self) -> None:
        """Every RAM page read-only to the guest: its first write will say it is dirty."""
        self.dirty = set()
        for page in range(self.ram_pages):
            self.rights[page] &= ~EPT_W
        self.on_change()

    def write_fault(self, gpa: int) -> bool:
        """An EPT violation on a write: True when it was the dirty log's (the page is now
        noted and writable, and the instruction may run again)."""
        page = gpa >> PAGE_SHIFT
        if self.dirty is None or page >= self.ram_pages or self.rights[page] & EPT_W \
                or not self.rights[page] & EPT_R:
            return False
        self.dirty.add(page)
        self.rights[page] |= EPT_W
        self.on_change()
        return True

    def take_dirty(self) -> list[int]:
        """The pages written since the log started (or since the last call), sorted; they
        are made read-only again, so the next round sees the next writes."""
        pages = sorted(self.dirty or ())
        if self.dirty is not None:
            for page in pages:
                self.rights[page] &= ~EPT_W
            self.dirty = set()
            self.on_change()
        return pages

    def stop_dirty_log(self) -> None:
        for page in range(self.ram_pages):
            if self.rights[page] & EPT_R:
                self.rights[page] |= EPT_W
        self.dirty = None
        self.on_change()
