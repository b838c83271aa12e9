"""The guest's page tables, walked as the MMU walks them: the one translator of linear addresses.

Unicorn walks the guest's page tables itself while guest code runs, but the monitor reads
guest memory too — an IDT gate, a TSS, the stack an exception frame goes on, an operand of
an emulated instruction — and Unicorn offers no walk that a Python caller can use with the
guest's own rights and accessed/dirty side effects. So this file is the MMU for every
monitor-side access, in every technique: each reader of guest memory goes through
``translate`` (or a ``GuestAddressSpace`` built on it), so that it faults where the guest's
CPU would fault, with the error code and CR2 the CPU would give, and leaves behind the same
accessed and dirty bits.

The reference is the bare machine of this project, qemu-system-i386 7.2, whose
``mmu_translate`` (target/i386/tcg/sysemu/excp_helper.c) this follows step by step:

* 32-bit paging: the PDE at ``(CR3 & ~0xfff) + 4*(linear >> 22)``, then the PTE at
  ``(PDE & ~0xfff) + 4*((linear >> 12) & 0x3ff)``. A PDE with PS set maps a 4 MiB page when
  CR4.PSE is set (PDE bits 20:13 give physical address bits 39:32, PSE-36; bit 21 is the only
  reserved bit QEMU checks); with CR4.PSE clear the PS bit is ignored.
* U/S and R/W are ANDed over both levels. A user access to a supervisor page faults; a
  write to a read-only page faults when the access is a user one or CR0.WP is set (so a
  supervisor write with WP=0 succeeds). With CR4.SMEP, a supervisor fetch from a user page faults.
* The accessed bit of a PDE that points to a page table is set as soon as the walk passes
  it — before the PTE is even read, so a walk that then faults on the PTE leaves it set.
  The leaf (PTE, or the 4 MiB PDE) gets A, and D on a write, only when the access is allowed.
  Each entry is written back only when a bit actually changes.
* The error code of a #PF: P (bit 0) for a protection or reserved-bit fault, W/R (bit 1) on a
  write, U/S (bit 2) for a user access, RSVD (bit 3) for a reserved bit — **without** P: QEMU
  7.2 sets ``error_code = PG_ERROR_RSVD_MASK`` alone (the SDM, and Unicorn's older QEMU, also set
  P) — and I/D (bit 4) for a fetch only when EFER.NXE with CR4.PAE, or CR4.SMEP, is on.
* PAE (CR4.PAE): the four PDPTEs are read at every walk (QEMU does not cache them at the CR3
  load as hardware does) and get their accessed bit set; 2 MiB pages whatever CR4.PSE says;
  NX with EFER.NXE; reserved bits above the 36 physical-address bits qemu32 reports.

What is not modelled, and why: SMAP (it depends on EFLAGS.AC, which a Paging does not carry;
a supervisor access is never refused for touching a user page), protection keys (long mode
only), the A20 gate (multiboot guests run with A20 on), and long mode. A page-table entry
outside RAM is a ``BusError`` (the walk stops there), never a fault for the guest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..machine.faults import PF_VECTOR, BusError, GuestFault

CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_SMEP = 1 << 20
EFER_NXE = 1 << 11

PG_P = 1 << 0
PG_RW = 1 << 1
PG_US = 1 << 2
PG_A = 1 << 5
PG_D = 1 << 6
PG_PS = 1 << 7
PG_PAT_LARGE = 1 << 12          # PAT bit of a large-page entry: not an address bit
PG_NX = 1 << 63

PF_P = 1 << 0
PF_W = 1 << 1
PF_U = 1 << 2
PF_RSVD = 1 << 3
PF_ID = 1 << 4

PAGE_SIZE = 0x1000
PAGE_MASK = 0xFFFFF000
LINEAR_MASK = 0xFFFFFFFF
# qemu32 (qemu-system-i386's CPU) has PAE and PSE-36, so QEMU gives it 36 physical-address bits.
PHYS_ADDR_BITS = 36
PG_ADDRESS_MASK = 0x000FFFFFFFFFF000
PG_HI_USER_MASK = 0x7FF0000000000000   # PAE PDPTE bits 62:52: reserved there


class PhysicalMemory(Protocol):
    """What the walker needs of guest-physical memory (GuestMemory provides it)."""
    def read(self, paddr: int, length: int) -> bytes: ...
    def write(self, paddr: int, data: bytes) -> None: ...
    def read_u32(self, paddr: int) -> int: ...
    def write_u32(self, paddr: int, value: int) -> None: ...


@dataclass(frozen=True)
class Paging:
    """The control registers that decide how a linear address is translated."""
    cr0: int
    cr3: int
    cr4: int
    efer: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cr0 & CR0_PG)


NO_PAGING = Paging(cr0=0, cr3=0, cr4=0)


def _bus(exc: IndexError, paddr: int, length: int) -> BusError:
    return exc if isinstance(exc, BusError) else BusError(paddr, length)


def _load32(phys: PhysicalMemory, paddr: int) -> int:
    try:
        return phys.read_u32(paddr)
    except IndexError as exc:
        raise _bus(exc, paddr, 4) from None


def _load64(phys: PhysicalMemory, paddr: int) -> int:
    try:
        return int.from_bytes(phys.read(paddr, 8), "little")
    except IndexError as exc:
        raise _bus(exc, paddr, 8) from None


def _read_phys(phys: PhysicalMemory, paddr: int, length: int) -> bytes:
    try:
        return phys.read(paddr, length)
    except IndexError as exc:
        raise _bus(exc, paddr, length) from None


def _set_bits(phys: PhysicalMemory, paddr: int, entry: int, bits: int) -> None:
    """Set ``bits`` in the low 32 bits of an entry, writing only if one of them was clear."""
    if bits & ~entry:
        try:
            phys.write_u32(paddr, (entry | bits) & 0xFFFFFFFF)
        except IndexError as exc:
            raise _bus(exc, paddr, 4) from None


@dataclass(frozen=True)
class _Leaf:
    """Where a walk ended: the entry that maps the page, and the rights gathered on the way."""
    address: int        # physical address of the leaf entry (PTE, or the large-page PDE)
    entry: int          # its value (for PSE-36, with bits 39:32 of the frame already in place)
    rights: int         # U/S, R/W and NX ANDed over all levels (NX inverted: set = executable)
    page_size: int
    reserved: int       # bits that must be clear in ``entry``


class _PageFault(Exception):
    """A walk step failed; the kind decides the low bits of the error code."""
    def __init__(self, code: int):
        self.code = code


def translate(phys: PhysicalMemory, paging: Paging, linear: int, *, write: bool = False,
              user: bool = False, fetch: bool = False, set_ad: bool = True) -> int:
    """The guest-physical address of ``linear`` for this access, or GuestFault(#PF).

    ``user`` is CPL 3 (implicit supervisor accesses such as descriptor-table reads pass
    False); ``fetch`` an instruction fetch; ``set_ad=False`` walks without touching A/D
    bits (a probe the guest cannot observe). A page-table entry outside RAM raises BusError.
    """
    linear &= LINEAR_MASK
    if not paging.cr0 & CR0_PG:
        return linear
    if write and fetch:
        raise ValueError("an access is a write or a fetch, not both")
    pae = bool(paging.cr4 & CR4_PAE)
    try:
        if pae:
            leaf = _walk_pae(phys, paging, linear, set_ad)
        else:
            leaf = _walk_32bit(phys, paging, linear, set_ad)
        _check(leaf, paging, write=write, user=user, fetch=fetch)
    except _PageFault as fault:
        code = fault.code
        if user:
            code |= PF_U
        if write:
            code |= PF_W
        elif fetch and ((pae and paging.efer & EFER_NXE) or paging.cr4 & CR4_SMEP):
            code |= PF_ID
        raise GuestFault(PF_VECTOR, code, cr2=linear,
                         why=f"page fault at {linear:#010x}") from None
    if set_ad:
        _set_bits(phys, leaf.address, leaf.entry, PG_A | (PG_D if write else 0))
    size = leaf.page_size
    return (leaf.entry & PG_ADDRESS_MASK & ~(size - 1)) | (linear & (size - 1))


def _walk_32bit(phys: PhysicalMemory, paging: Paging, linear: int, set_ad: bool) -> _Leaf:
    """Two-level 32-bit paging (SDM Vol. 3, 4.3)."""
    pde_addr = (paging.cr3 & PAGE_MASK) + ((linear >> 20) & 0xFFC)
    pde = _load32(phys, pde_addr)
    if not pde & PG_P:
        raise _PageFault(0)
    if pde & PG_PS and paging.cr4 & CR4_PSE:
        # 4 MiB page. PSE-36: PDE bits 20:13 are physical-address bits 39:32; bit 21 is reserved.
        entry = pde | ((pde & 0x1FE000) << (32 - 13))
        return _Leaf(pde_addr, entry, pde | PG_NX, 0x400000, reserved=1 << 21)
    if set_ad:
        _set_bits(phys, pde_addr, pde, PG_A)
    pte_addr = (pde & PAGE_MASK) + ((linear >> 10) & 0xFFC)
    pte = _load32(phys, pte_addr)
    if not pte & PG_P:
        raise _PageFault(0)
    return _Leaf(pte_addr, pte, (pde | PG_NX) & (pte | PG_NX), PAGE_SIZE, reserved=0)


def _walk_pae(phys: PhysicalMemory, paging: Paging, linear: int, set_ad: bool) -> _Leaf:
    """Three-level PAE paging (SDM Vol. 3, 4.4), as QEMU 7.2 walks it."""
    reserved = PG_ADDRESS_MASK & ~((1 << PHYS_ADDR_BITS) - 1)
    if not paging.efer & EFER_NXE:
        reserved |= PG_NX
    pdpte_addr = (paging.cr3 & 0xFFFFFFE0) + ((linear >> 27) & 0x18)
    pdpte = _load64(phys, pdpte_addr)
    if not pdpte & PG_P:
        raise _PageFault(0)
    reserved |= PG_HI_USER_MASK
    if pdpte & (reserved | PG_NX):
        raise _PageFault(PF_RSVD)
    if set_ad:
        _set_bits(phys, pdpte_addr, pdpte, PG_A)
    rights = PG_NX | PG_US | PG_RW

    pde_addr = (pdpte & PG_ADDRESS_MASK) + (((linear >> 21) & 0x1FF) << 3)
    pde = _load64(phys, pde_addr)
    if not pde & PG_P:
        raise _PageFault(0)
    if pde & reserved:
        raise _PageFault(PF_RSVD)
    if pde & PG_PS:
        size = 0x200000
        large_reserved = (size - 1) & PG_ADDRESS_MASK & ~PG_PAT_LARGE
        return _Leaf(pde_addr, pde, rights & (pde ^ PG_NX), size, reserved | large_reserved)
    if set_ad:
        _set_bits(phys, pde_addr, pde, PG_A)
    rights &= pde ^ PG_NX

    pte_addr = (pde & PG_ADDRESS_MASK) + (((linear >> 12) & 0x1FF) << 3)
    pte = _load64(phys, pte_addr)
    if not pte & PG_P:
        raise _PageFault(0)
    if pte & reserved:
        raise _PageFault(PF_RSVD)
    return _Leaf(pte_addr, pte, rights & (pte ^ PG_NX), PAGE_SIZE, reserved)


def _check(leaf: _Leaf, paging: Paging, *, write: bool, user: bool, fetch: bool) -> None:
    """QEMU's do_check_protect: reserved bits of the leaf, then the access against the rights."""
    if leaf.entry & leaf.reserved:
        raise _PageFault(PF_RSVD)
    rights = leaf.rights ^ PG_NX                    # now NX set means "not executable"
    if user and not rights & PG_US:
        raise _PageFault(PF_P)
    if write:
        if not rights & PG_RW and (user or paging.cr0 & CR0_WP):
            raise _PageFault(PF_P)
    elif fetch:
        if rights & PG_NX or (not user and paging.cr4 & CR4_SMEP and rights & PG_US):
            raise _PageFault(PF_P)


class GuestAddressSpace:
    """Guest memory by linear address, through the guest's current paging.

    ``paging`` is called at each access, so the space always follows the CPU's (or the
    virtual CPU's) current CR0/CR3/CR4/EFER. An access that spans pages translates every
    page, in order, before touching any byte: a write that faults on its second page has
    written nothing (the first page's A/D bits are set, as on QEMU, whose store probes both
    pages first). CR2 is the faulting address itself on the first page and the start of the
    page on a later one. Linear addresses wrap at 4 GiB.
    """

    def __init__(self, phys: PhysicalMemory, paging: Callable[[], Paging], fast=None):
        self.phys = phys
        self.paging = paging
        # The same walk in C (machine/native/tlbfill.c ``hv_walk``, held to this file by
        # tests/memory/test_shadow_fill.py): ``fast(paging, linear, write, user)`` gives the
        # address or raises as ``translate``; None where it does not walk (PAE) or is absent.
        self.fast = fast

    def translate(self, linear: int, *, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        return self._translate(self.paging(), linear, write, user, fetch)

    def _translate(self, paging: Paging, linear: int, write: bool, user: bool, fetch: bool) -> int:
        if self.fast is not None and paging.cr0 & CR0_PG:
            gpa = self.fast(paging, linear, write, user)
            if gpa is not None:
                return gpa
        return translate(self.phys, paging, linear, write=write, user=user, fetch=fetch)

    def _pieces(self, linear: int, length: int, *, write: bool, user: bool,
                fetch: bool) -> list[tuple[int, int]]:
        """(physical address, length) of each page-sized piece of the access, all translated."""
        paging = self.paging()
        linear &= LINEAR_MASK
        if not paging.cr0 & CR0_PG and linear + length <= LINEAR_MASK + 1:
            return [(linear, length)]
        pieces = []
        while length > 0:
            chunk = min(length, PAGE_SIZE - (linear & 0xFFF))
            pieces.append((self._translate(paging, linear, write, user, fetch), chunk))
            linear = (linear + chunk) & LINEAR_MASK
            length -= chunk
        return pieces

    def read(self, linear: int, length: int, *, user: bool = False, fetch: bool = False) -> bytes:
        if not self.paging().cr0 & CR0_PG and (linear & LINEAR_MASK) + length <= LINEAR_MASK + 1:
            return _read_phys(self.phys, linear & LINEAR_MASK, length)      # the common case, direct
        pieces = self._pieces(linear, length, write=False, user=user, fetch=fetch)
        if len(pieces) == 1:
            return _read_phys(self.phys, *pieces[0])
        return b"".join(_read_phys(self.phys, pa, n) for pa, n in pieces)

    def write(self, linear: int, data: bytes, *, user: bool = False) -> None:
        done = 0
        for pa, n in self._pieces(linear, len(data), write=True, user=user, fetch=False):
            try:
                self.phys.write(pa, bytes(data[done:done + n]))
            except IndexError as exc:
                raise _bus(exc, pa, n) from None
            done += n

    def read_u16(self, linear: int, *, user: bool = False) -> int:
        return int.from_bytes(self.read(linear, 2, user=user), "little")

    def read_u32(self, linear: int, *, user: bool = False) -> int:
        return int.from_bytes(self.read(linear, 4, user=user), "little")

    def write_u16(self, linear: int, value: int, *, user: bool = False) -> None:
        self.write(linear, (value & 0xFFFF).to_bytes(2, "little"), user=user)

    def write_u32(self, linear: int, value: int, *, user: bool = False) -> None:
        self.write(linear, (value & 0xFFFFFFFF).to_bytes(4, "little"), user=user)


class EventMemory:
    """Guest memory by linear address for one event's one-pass delivery (``deliver_flat``, the
    exit fast path) with paging on: each page is walked once per event in C (the space's
    ``fast`` walk, which sets A, and D for a store, as the CPU's own delivery would), as the
    CPU's TLB would hold it. Any fault, or an access that crosses a page, is an IndexError: the
    one-pass path declines, and the general path walks and raises what the CPU raises.

    Across events a walk is remembered with the entries it read, as they were after it (A, and
    D for a store, set): while both still hold those values under the same CR0/CR3/CR4, walking
    again would give the same page and write nothing, so comparing two words replaces the walk
    (a fresh walk is a foreign call, ~2 µs; the comparison a fraction of that)."""

    _REMEMBERED = 64                     # walks kept; all forgotten when full

    def __init__(self, space: GuestAddressSpace, memory):
        self._fast, self._memory = space.fast, memory
        self.paging: Paging | None = None
        self._pages: dict[tuple[int, bool], int] = {}
        self._walks: dict[tuple, tuple] = {}

    def begin(self, paging: Paging) -> None:
        self.paging = paging
        self._pages.clear()

    def _physical(self, address: int, length: int, write: bool) -> int:
        address &= 0xFFFFFFFF
        if (address & 0xFFF) + length > 0x1000:
            raise IndexError(address)
        key = (address >> 12, write)
        base = self._pages.get(key)
        if base is None:
            base = self._pages[key] = self._walk(address, write)
        return base | (address & 0xFFF)

    def _walk(self, address: int, write: bool) -> int:
        """The guest-physical page of ``address`` for a supervisor access (IndexError if it faults)."""
        paging, read = self.paging, self._memory.read_u32
        key = (paging.cr0, paging.cr3, paging.cr4, address >> 12, write)
        known = self._walks.get(key)
        if known is not None:
            pde_at, pde, pte_at, pte, base = known
            if read(pde_at) == pde and (pte_at is None or read(pte_at) == pte):
                return base
        try:
            gpa = self._fast(paging, address, write, False)
        except GuestFault:
            raise IndexError(address) from None
        if gpa is None:
            raise IndexError(address)
        pde_at = (paging.cr3 & 0xFFFFF000) + ((address >> 20) & 0xFFC)
        pde = read(pde_at)
        pte_at = None if pde & PG_PS and paging.cr4 & CR4_PSE else (pde & 0xFFFFF000) + ((address >> 10) & 0xFFC)
        if len(self._walks) >= self._REMEMBERED:
            self._walks.clear()
        base = gpa & ~0xFFF
        self._walks[key] = (pde_at, pde, pte_at, None if pte_at is None else read(pte_at), base)
        return base

    def read(self, address: int, length: int) -> bytes:
        return self._memory.read(self._physical(address, length, False), length)

    def read_u64(self, address: int) -> int:
        return self._memory.read_u64(self._physical(address, 8, False))

    def write(self, address: int, data: bytes) -> None:
        self._memory.write(self._physical(address, len(data), True), data)
