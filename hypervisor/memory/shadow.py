"""Shadow paging for trap-and-emulate: the guest's page tables are only data.

A deprivileged guest cannot be allowed to point the CPU at its own page tables: they map its
*pseudo-physical* addresses, and the CPU would then reach whatever machine memory those
numbers name. So the monitor keeps the real CPU's paging its own and makes the translation
the guest asked for itself: guest-virtual → (the guest's tables) → guest-physical → (the P2M,
``machine/memory.py``) → machine. That composition is the *shadow*.

Two ways to build it, and why hvsim has the second:

* **Real shadow tables**: page tables in monitor memory that map guest-virtual straight to
  machine frames, loaded into the real CR3, walked by the CPU's MMU. The guest's page-table
  pages are write-protected so that every edit can be mirrored; a miss in the shadow is a
  *hidden* page fault that the monitor fixes by walking the guest's tables; accessed and
  dirty bits need more hidden faults (a page is mapped read-only until the first write,
  when D is set in the guest's entry). Each of those is a round trip through the monitor.
* **A virtual TLB** (what hvsim does): Unicorn lets a program fill its TLB itself
  (``UC_TLB_VIRTUAL``), so every TLB miss comes to a C callback
  (``machine/native/tlbfill.c``, mode SHADOW) that walks the guest's tables, as the bare
  machine's MMU does, against the *virtual* CR0/CR3/CR4, sets A and D in the guest's
  entries exactly when the hardware would, and hands Unicorn the guest-physical page, which
  Unicorn's memory map turns into the machine frame. The shadow is the TLB: it is dropped on
  every CR3 load, invlpg and paging-mode change the monitor emulates, as the hardware drops
  its TLB. A guest's own page-fault is found by the walk and reflected with its CR2 and
  error code; nothing else ever leaves C. A hidden fault costs a C walk (well under a
  microsecond) instead of an exit, and a guest that writes its page tables costs nothing at
  all, because a TLB need not follow those writes (the guest must invlpg, as on hardware).

Measured (docs/architecture.md, "Memory virtualization"): Unicorn walks real tables with the
same softmmu TLB that the callback fills, so real shadow tables buy nothing the callback
lacks, and every hidden fault and page-table write would become a Python exit (the cost of
one exception exit, ~10-30 µs) instead of a ~0.1 µs C walk.

What write protection is still for: the guest's GDT, which trap *does* shadow (the real CPU
uses the monitor's copy, ``techniques/trap.py``). Its frames are write-protected through the
frame table, and under the virtual TLB a store to one is redirected to an alias window where
an MMIO callback performs it and tells the monitor (``PC.shadow_paging``).

The monitor's own memory lies above 4 GiB, where no 32-bit guest address reaches, and the
callback refuses any guest-physical address outside RAM and the devices (a PSE-36 4 MiB page
could otherwise name it): the guest kernel, at any privilege, cannot touch it.
"""
from __future__ import annotations

from .walker import CR0_PG, CR4_PAE, Paging


class ShadowPaging:
    """One guest's shadow, in the PC's TLB fill, against the virtual control registers.

    ``load`` is called with the guest's virtual CR0/CR3/CR4 whenever the monitor emulates a
    write to one; ``invalidate`` for invlpg. ``hidden_faults`` counts the hidden faults so far.
    """

    def __init__(self, pc, paging: Paging):
        self._pc = pc
        pc.shadow_paging(paging.cr0, paging.cr3, paging.cr4)
        self._paging = paging

    def load(self, paging: Paging, cr3_loaded: bool = False) -> bool:
        """New virtual control registers. True when the shadow was dropped (any CR3 load, even
        of the same value, or a change of PG, WP, PSE, PAE or PGE: where the CPU flushes its TLB)."""
        old = self._paging
        self._paging = paging
        if (not cr3_loaded and not (old.cr0 ^ paging.cr0) & _CR0_FLUSH
                and not (old.cr4 ^ paging.cr4) & _CR4_FLUSH):
            return False
        self._pc.tlb.set_registers(paging.cr0, paging.cr3, paging.cr4)
        return True

    def invalidate(self, linear: int) -> None:
        """invlpg: Unicorn drops TLB entries only all at once, which a TLB may always do."""
        self._pc.tlb.flush()

    @property
    def hidden_faults(self) -> int:
        """Hidden faults so far: the first read and first write of each page since each flush,
        which is when a shadow page table would fault (counted the same run after run, not
        QEMU's TLB misses, whose number moves with its host-timed resizing)."""
        return self._pc.tlb.hidden_faults



_CR0_FLUSH = CR0_PG | (1 << 16)                   # PG, WP
_CR4_FLUSH = (1 << 4) | CR4_PAE | (1 << 7)        # PSE, PAE, PGE
