"""Shadow paging for trap-and-emulate: the guest's page tables are only data.

A deprivileged guest cannot be allowed to point the CPU at its own page tables: they map its
*pseudo-physical* addresses, and the CPU would then reach whatever machine memory those
numbers name. So the monitor keeps the real CPU's paging its own and makes the translation
the guest asked for itself: guest-virtual → (the guest's tables) → guest-physical → (the P2M,
``machine/memory.py``) → machine. That composition is the *shadow*.

What hvsim builds (``machine/native/tlbfill.c``, mode SHADOW):

* **Shadow page tables, cached per address space.** For each guest CR3 the monitor keeps a
  shadow page directory whose entries point at shadow page tables (or are 4 MiB leaves); a
  shadow PTE holds the guest-physical page and the rights the guest's PDE and PTE combine to,
  with the PTE's dirty bit. Up to ``SPACES`` address spaces are kept; a CR3 load switches to
  the new CR3's space, made on first use, the least recently loaded one evicted beyond the
  bound. The shadow page tables come from a pool of ``TABLES``; when it runs dry every space
  is dropped (a flush on full).
* **Walked by a TLB fill, not by Unicorn's MMU.** Unicorn lets a program fill its TLB itself
  (``UC_TLB_VIRTUAL``): on every TLB miss a C callback looks the address up in the current
  space, and hands Unicorn the guest-physical page, which Unicorn's memory map turns into the
  machine frame. Only where the shadow holds nothing that allows the access does it walk the
  guest's tables, as the bare machine's MMU does, against the *virtual* CR0/CR3/CR4: that is a
  *hidden* page fault, fixed in C and counted as a shadow_page_fault exit. A/D bits are set
  in the guest's entries by that walk exactly when the hardware would set them: a shadow entry
  exists only while the guest's entries have A set, and allows stores only once D is set, so
  the first store to a clean page is a hidden fault that sets D. A walk that finds the guest's
  own fault refuses the fill, and the monitor reflects the #PF with its CR2 and error code.
* **Guest page tables are write-protected.** Every guest frame a cached shadow was built from
  (each space's page directory, each page table a shadow page table mirrors) is marked in the
  frame table (``machine/memory.py`` SHADOWED) and counted; while it is, the fill sends every
  store to it to an alias window above 4 GiB, where a C MMIO callback performs the store and
  drops each shadow entry built from the bytes it changed, in every space: a table reached
  through a recursive PDE, mapped at two addresses, or shared by two address spaces is covered
  the same way. The TLB is then flushed, so the change is seen at once. The monitor's own
  writes to guest memory (an exception frame, a device's DMA) tell the shadow the same way
  (``GuestMemory.on_write``). invlpg drops the page's entry; a change of CR0.PG/WP or CR4's
  PSE/PAE/PGE drops every space.

Measured against the alternatives (docs/architecture.md, "Memory virtualization"):

* *A virtual TLB* (what hvsim had before: the fill walks the guest's tables on every TLB miss,
  the "shadow" dropped on every CR3 load) costs a C walk per miss and nothing per page-table
  store, but refills everything after every address-space switch.
* *Real shadow tables walked by Unicorn's MMU* (real CR3 pointing at them) would make every
  hidden fault and every page-table store a Python exit (~10-30 µs each) instead of C, and
  Unicorn's MMU walks with the same softmmu TLB the fill fills, so nothing is gained for it.

What the frame table's write protection is also for: the guest's GDT and LDT, which trap
shadows (the real CPU uses the monitor's copies, ``techniques/trap.py``). A store to one goes
through the same alias window to the monitor, which performs it and updates its copy.

The monitor's own memory lies above 4 GiB, where no 32-bit guest address reaches, and the
fill refuses any guest-physical address outside RAM and the devices (a PSE-36 4 MiB page
could otherwise name it): the guest kernel, at any privilege, cannot touch it.
"""
from __future__ import annotations

from .walker import CR0_PG, CR4_PAE, Paging


SPACES = 8        # address spaces cached, one per guest CR3 (the least recently loaded goes)
TABLES = 1024     # shadow page tables among them (4 MiB); all spaces are dropped when none is left


class ShadowPaging:
    """One guest's cached shadow page tables, in the PC's TLB fill, against the virtual control
    registers.

    ``load`` is called with the guest's virtual CR0/CR3/CR4 whenever the monitor emulates a
    write to one; ``invalidate`` for invlpg. ``hidden_faults`` counts the hidden faults so far;
    ``stats`` says what the cache did.
    """

    def __init__(self, pc, paging: Paging, spaces: int | None = None, tables: int | None = None):
        self._pc = pc
        pc.shadow_paging(paging.cr0, paging.cr3, paging.cr4, spaces or SPACES, tables or TABLES)
        self._paging = paging

    def load(self, paging: Paging, cr3_loaded: bool = False) -> bool:
        """New virtual control registers. True when the CPU's TLB was dropped (any CR3 load, even
        of the same value, or a change of PG, WP, PSE, PAE or PGE: where the CPU flushes its TLB).
        A CR3 load keeps the cached spaces (the next fill switches to the new CR3's); a change of
        paging mode drops them all, since every shadow entry was made under the old one."""
        old = self._paging
        self._paging = paging
        mode_changed = (old.cr0 ^ paging.cr0) & _CR0_FLUSH or (old.cr4 ^ paging.cr4) & _CR4_FLUSH
        if not cr3_loaded and not mode_changed:
            return False
        tlb = self._pc.tlb
        if mode_changed:
            tlb.reset_shadows()
        tlb.set_registers(paging.cr0, paging.cr3, paging.cr4)
        return True

    def invalidate(self, linear: int) -> None:
        """invlpg: the shadow entry of the page goes, and Unicorn's TLB, which it drops only whole."""
        tlb = self._pc.tlb
        tlb.invalidate(linear)
        tlb.flush()

    @property
    def hidden_faults(self) -> int:
        """Hidden faults so far: fills the shadow could not serve, which walked the guest's tables
        and filled it (the same run after run)."""
        return self._pc.tlb.hidden_faults

    def stats(self) -> dict[str, int]:
        """What the cache did: fills served by it, spaces made and reused on CR3 loads, evicted,
        guest stores to page tables and the entries they dropped, invalidations, flushes on full."""
        return self._pc.tlb.shadow_stats()


_CR0_FLUSH = CR0_PG | (1 << 16)                   # PG, WP
_CR4_FLUSH = (1 << 4) | CR4_PAE | (1 << 7)        # PSE, PAE, PGE
