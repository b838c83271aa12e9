"""The shadow translates every address as the guest's own tables say, and maps nothing else.

trap's shadow paging and hvm's EPT are the C TLB fill (machine/native/tlbfill.c, modes SHADOW and
EPT). Under EPT every TLB miss walks the guest's page tables; under SHADOW a miss is served by the
cached shadow page tables, and walks (a hidden fault) only where they hold nothing that allows
the access. hypervisor/memory/walker.py is the same walk in Python, written from QEMU 7.2's
mmu_translate and tested on its own (test_walker.py); it is the reference here. Hypothesis builds
random 32-bit page tables (present or not, R/W, U/S, A/D already set or not, 4 MiB pages with
PSE-36 bits, frames outside RAM), edits them, switches between three page directories (more
than the two spaces the shadow may cache here, and a pool of three shadow page tables, so
eviction and the flush on full happen), invalidates pages, and asks for reads, writes and fetches
at CPL 0 and 3. An edit is a store as the CPU would make it: to a frame the shadow protects it
arrives through the alias window (or as the monitor's own write), to any other frame it goes
straight to RAM, unseen, so a shadow built from an unprotected frame would go stale and fail.
After each step the fill, called directly as Unicorn calls it, must give the reference's page,
refuse where it faults with the same error code, and leave guest memory (the accessed and dirty
bits) byte for byte as the reference leaves it. It must never hand Unicorn a frame outside the
domain: a page above 4 GiB (where the monitor lives) is refused, and under EPT so is every page
the EPT does not allow, the walk's own page-table reads included.
"""
from __future__ import annotations

import ctypes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import UC_MEM_FETCH, UC_MEM_READ, UC_MEM_WRITE

from hypervisor.machine.faults import BusError, GuestFault
from hypervisor.machine.memory import SHADOWED, GuestMemory, MachineMemory
from hypervisor.machine.native.tlbfill import (EPT_MMIO, EPT_R, EPT_W, EPT_X, FAULT_BUS, FAULT_EPT, FAULT_PF,
                                               FRAMES_4G, MODE_EPT, MODE_SHADOW, _Fill, native_fill)
from hypervisor.memory.walker import CR0_PG, CR0_WP, CR4_PSE, Paging, translate

FILL = native_fill()
pytestmark = pytest.mark.skipif(FILL is None, reason="the C TLB fill is not built")

RAM_PAGES = 64                      # 256 KiB of guest RAM
PD_A, PD_B, PD_C = 0x1000, 0x2000, 0x6000   # three page directories
TABLES = (0x3000, 0x4000, 0x5000, PD_C)     # page tables (the last also a page directory: recursive)
ALIAS = 0x2_0000_0000               # where a store to a protected frame goes (machine/pc.py's)
SPACES, POOL = 2, 3                 # the shadow's bounds here, small enough to be reached
SLOTS = 4                           # PD slots 0..3 used: linear 0 .. 16 MiB


class _Entry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]


_CALL = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                         ctypes.POINTER(_Entry), ctypes.c_void_p)
_CTL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_no_ctl = _CTL(lambda uc, control: 0)           # the TLB flush a first fetch asks for: nothing to flush here
_ALIAS_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64,
                                ctypes.c_void_p)


class Fill:
    """The C fill over one guest's RAM, called as Unicorn calls it."""

    def __init__(self, memory: GuestMemory, mode: int, rights: bytes | None = None):
        self.memory = memory
        self.call = _CALL(FILL.address)
        self.cpl = ctypes.c_uint32(0)
        self.p2m = (ctypes.c_uint32 * len(memory.p2m))(*memory.p2m)
        self.executed = (ctypes.c_uint8 * (1 << 17))()
        self.rights = (ctypes.c_uint8 * FRAMES_4G)()
        if rights is None:
            ctypes.memset(self.rights, EPT_MMIO, FRAMES_4G)
            ctypes.memset(self.rights, EPT_R | EPT_W | EPT_X, RAM_PAGES)
        else:
            ctypes.memmove(self.rights, rights, len(rights))
        f = self.fill = _Fill(mode=mode, write_type=UC_MEM_WRITE, fetch_type=UC_MEM_FETCH)
        f.ctl = ctypes.cast(_no_ctl, ctypes.c_void_p).value
        f.executed = ctypes.addressof(self.executed)
        f.hflags_at = ctypes.addressof(self.cpl)
        base = ctypes.addressof(f)
        f.cr0_at, f.cr3_at, f.cr4_at = (base + getattr(_Fill, n).offset for n in ("cr0", "cr3", "cr4"))
        f.p2m, f.pfns, f.base = ctypes.addressof(self.p2m), len(memory.p2m), memory.machine.base_address
        f.ept, f.ept_frames = ctypes.addressof(self.rights), FRAMES_4G
        if mode == MODE_SHADOW:
            self._cache(memory)

    def _cache(self, memory: GuestMemory) -> None:
        """The cached shadow page tables, as TlbFill.use_shadow gives them."""
        library = FILL.library
        library.hv_shadow_size.restype = library.hv_space_size.restype = ctypes.c_size_t
        self.arrays = (ctypes.create_string_buffer(library.hv_shadow_size()),
                       ctypes.create_string_buffer(library.hv_space_size() * SPACES),
                       (ctypes.c_uint32 * (1024 * POOL))(), (ctypes.c_uint32 * POOL)(),
                       (ctypes.c_uint16 * RAM_PAGES)(), (ctypes.c_uint16 * RAM_PAGES)())
        shadows, spaces, pool, free, self.refs, table_refs = self.arrays
        f = self.fill
        f.alias_base = ALIAS
        library.hv_shadow_init(ctypes.byref(f), shadows, spaces, ctypes.c_uint32(SPACES), pool,
                               ctypes.c_uint32(POOL), free, self.refs, table_refs, ctypes.c_uint32(RAM_PAGES),
                               ctypes.c_void_p(memory.machine.flags_address))
        wrote = library.hv_shadow_wrote
        wrote.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32]
        memory.on_write = lambda gpa, size: wrote(ctypes.addressof(f), gpa, size)
        self.alias_write = _ALIAS_WRITE(ctypes.cast(library.hv_alias_write, ctypes.c_void_p).value)
        self.invalidate = lambda linear: library.hv_shadow_invalidate(ctypes.byref(f), ctypes.c_uint32(linear))

    def store(self, gpa: int, value: int, through_monitor: bool) -> None:
        """A 4-byte store by the guest: through the alias window to a frame the shadow protects
        (or by the monitor, which tells the shadow), straight to RAM to any other."""
        memory = self.memory
        protected = self.fill.sh and self.refs[gpa >> 12]
        if protected and through_monitor:
            memory.write_u32(gpa, value)
        elif protected:
            self.alias_write(None, gpa, 4, value, ctypes.addressof(self.fill))
        else:
            hook, memory.on_write = memory.on_write, None
            memory.write_u32(gpa, value)
            memory.on_write = hook
        flags = memory.machine._flags[memory.p2m[gpa >> 12]]
        assert bool(protected) == bool(flags & SHADOWED), "the frame table says otherwise"

    def translate(self, paging: Paging, linear: int, access: str, user: bool):
        f = self.fill
        f.cr0, f.cr3, f.cr4 = paging.cr0, paging.cr3, paging.cr4
        self.cpl.value = 3 if user else 0
        kind = {"read": UC_MEM_READ, "write": UC_MEM_WRITE, "fetch": UC_MEM_FETCH}[access]
        entry = _Entry()
        if self.call(None, linear & ~0xFFF, kind, ctypes.byref(entry), ctypes.addressof(f)):
            if f.sh and entry.paddr >= ALIAS:
                # A store to a protected frame goes to the alias: only a write, only to such a frame.
                assert access == "write" and self.refs[(entry.paddr - ALIAS) >> 12], (hex(entry.paddr), access)
                return "page", entry.paddr - ALIAS, entry.perms
            return "page", entry.paddr, entry.perms
        return "refused", f.fault, f.error_code


def reference(memory: GuestMemory, paging: Paging, linear: int, access: str, user: bool,
              rights: bytes | None = None):
    """The walker's answer, with the EPT's checks added where ``rights`` is given."""
    phys = memory if rights is None else _EptMemory(memory, rights)
    try:
        gpa = translate(phys, paging, linear & ~0xFFF, write=access == "write", user=user, fetch=access == "fetch")
    except GuestFault as fault:
        return "pf", fault.error_code
    except (BusError, _Violation):
        return "refused", None
    return "page", gpa & ~0xFFF


class _Violation(Exception):
    pass


class _EptMemory:
    """Guest RAM as an EPT walk sees it: a page-table read needs R, an A/D write needs W."""

    def __init__(self, memory: GuestMemory, rights: bytes):
        self.memory, self.rights = memory, rights

    def _check(self, paddr: int, need: int) -> None:
        page = paddr >> 12
        if page >= len(self.rights) or self.rights[page] & need != need:
            raise _Violation

    def read_u32(self, paddr):
        self._check(paddr, EPT_R)
        return self.memory.read_u32(paddr)

    def write_u32(self, paddr, value):
        self._check(paddr, EPT_W)
        self.memory.write_u32(paddr, value)

    def read(self, paddr, length):
        self._check(paddr, EPT_R)
        return self.memory.read(paddr, length)

    def write(self, paddr, data):
        self._check(paddr, EPT_W)
        self.memory.write(paddr, data)


# -- random page tables -----------------------------------------------------------------------
FLAGS = st.sampled_from([0x0, 0x1, 0x3, 0x5, 0x7, 0x21, 0x27, 0x61, 0x67, 0x07, 0x25])
FRAME = st.one_of(st.integers(0, RAM_PAGES - 1),                 # RAM
                  st.integers(RAM_PAGES, RAM_PAGES + 8),          # just past RAM: nothing, or a device
                  st.just(0xFEE00))                               # the local APIC's page
PTE = st.builds(lambda frame, flags: (frame << 12) | flags, FRAME, FLAGS)
# A PDE: a page table (one of TABLES) or a 4 MiB page (PS), whose PSE-36 bits may point above 4 GiB.
TABLE_PDE = st.builds(lambda table, flags: table | flags, st.sampled_from(TABLES), FLAGS)
PDE = st.one_of(
    TABLE_PDE, TABLE_PDE,
    st.builds(lambda big, high, flags: (big << 22) | (high << 13) | 0x80 | flags,
              st.integers(0, 3), st.sampled_from([0, 0, 0, 1, 0x7F]), FLAGS),
    st.builds(lambda frame, flags: (frame << 12) | flags, st.integers(RAM_PAGES, 0xFFFFF), FLAGS))
# Accesses, edits and invalidations meet on a few pages per slot, so the shadow is hit, and an edit
# it misses is seen.
INDEX = st.integers(0, 2)
PAGE = st.builds(lambda slot, index: slot * 1024 + index, st.integers(0, SLOTS - 1), INDEX)
ACCESS = st.tuples(PAGE, st.integers(0, 0xFFF),
                   st.sampled_from(["read", "write", "fetch"]), st.booleans())
EDIT = st.one_of(
    st.tuples(st.just("pde"), st.sampled_from([PD_A, PD_B, PD_C]), st.integers(0, SLOTS - 1), PDE, st.booleans()),
    st.tuples(st.just("pte"), st.sampled_from(TABLES), INDEX, PTE, st.booleans()))
# A sweep asks for every page the edits reach, one kind of access at one privilege.
SWEEP = st.tuples(st.sampled_from(["read", "write", "fetch"]), st.booleans())
CR3 = st.tuples(st.just("cr3"), st.sampled_from([PD_A, PD_B, PD_C]))
STEP = st.one_of(st.tuples(st.just("access"), ACCESS), st.tuples(st.just("edit"), EDIT),
                 st.tuples(st.just("edit"), EDIT), st.tuples(st.just("sweep"), SWEEP),
                 st.tuples(st.just("sweep"), SWEEP), CR3, CR3,
                 st.tuples(st.just("invlpg"), PAGE),
                 st.tuples(st.just("cr0.wp"), st.booleans()))


def twins() -> tuple[GuestMemory, GuestMemory]:
    """Two identical guest RAMs: one for the fill, one for the reference walk."""
    return (GuestMemory(MachineMemory(RAM_PAGES * 4096 * 2, extent_frames=8), RAM_PAGES * 4096),
            GuestMemory(MachineMemory(RAM_PAGES * 4096 * 2, extent_frames=8), RAM_PAGES * 4096))


def setup(memories, pdes, ptes) -> None:
    for memory in memories:
        for turn, pd in enumerate((PD_A, PD_B, PD_C)):       # each directory its own turn of them
            for slot, pde in enumerate(pdes[turn:] + pdes[:turn]):
                memory.write_u32(pd + 4 * slot, pde)
        for (table, index), pte in ptes.items():
            memory.write_u32(table + 4 * index, pte)


def run_steps(mode: int, pdes, ptes, steps, rights: bytes | None = None) -> None:
    fill_ram, ref_ram = twins()
    setup((fill_ram, ref_ram), pdes, ptes)
    fill = Fill(fill_ram, mode, rights)
    cr0, cr3, cr4 = CR0_PG | 0x11, PD_A, CR4_PSE
    for kind, arg in steps:
        if kind == "edit":
            what, table, index, value, through_monitor = arg
            fill.store(table + 4 * index, value, through_monitor)
            ref_ram.write_u32(table + 4 * index, value)
            continue
        if kind == "cr3":
            cr3 = arg
            continue
        if kind == "invlpg":
            if mode == MODE_SHADOW:
                fill.fill.cr3 = cr3
                fill.invalidate(arg << 12)
            continue
        if kind == "cr0.wp":
            cr0 = (cr0 | CR0_WP) if arg else (cr0 & ~CR0_WP)
            if mode == MODE_SHADOW:
                FILL.library.hv_shadow_reset(ctypes.byref(fill.fill))    # as ShadowPaging.load does
            continue
        if kind == "sweep":
            access, user = arg
            accesses = [(slot * 1024 + index, 0, access, user) for slot in range(SLOTS) for index in range(3)]
        else:
            accesses = [arg]
        for page, offset, access, user in accesses:
            linear = (page << 12) | offset
            paging = Paging(cr0, cr3, cr4)
            got = fill.translate(paging, linear, access, user)
            want = reference(ref_ram, paging, linear, access, user, rights)
            check(got, want, access, rights)
            assert fill_ram.read(0, RAM_PAGES * 4096) == ref_ram.read(0, RAM_PAGES * 4096), \
                f"A/D bits differ after {access} of {linear:#x} (user={user})"


NEED = {"read": EPT_R, "write": EPT_W, "fetch": EPT_X}


def check(got, want, access: str, rights: bytes | None) -> None:
    if want[0] == "pf":
        assert got[:2] == ("refused", FAULT_PF) and got[2] == want[1], (got, want)
        return
    if want[0] == "refused":            # a page-table entry outside RAM, or an EPT-refused walk
        assert got[0] == "refused" and got[1] in (FAULT_BUS, FAULT_EPT), (got, want)
        return
    gpa = want[1]
    page = gpa >> 12
    if rights is None:
        allowed = page < RAM_PAGES or gpa < 1 << 32          # RAM, or a device's (or no one's) page
    elif page < RAM_PAGES:
        allowed = rights[page] & NEED[access] == NEED[access]
    else:
        allowed = page < len(rights) and bool(rights[page] & EPT_MMIO)
    if not allowed:
        # The guest's tables name memory that is not the domain's (the monitor's, above 4 GiB),
        # or the EPT does not allow this access there: the fill refuses it.
        assert got[0] == "refused" and got[1] in (FAULT_BUS, FAULT_EPT), (got, want)
        return
    assert got[0] == "page" and got[1] == gpa, (got, want)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PDE, min_size=SLOTS, max_size=SLOTS),
       st.dictionaries(st.tuples(st.sampled_from(TABLES), INDEX), PTE, max_size=24),
       st.lists(STEP, min_size=15, max_size=40))
def test_the_shadow_translates_as_the_guests_tables_and_maps_only_the_domain(pdes, ptes, steps):
    run_steps(MODE_SHADOW, pdes, ptes, steps)


EPT_RIGHTS = st.lists(st.sampled_from([0, EPT_R, EPT_R | EPT_W, EPT_R | EPT_X, EPT_R | EPT_W | EPT_X] + [7] * 4),
                      min_size=RAM_PAGES, max_size=RAM_PAGES)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PDE, min_size=SLOTS, max_size=SLOTS),
       st.dictionaries(st.tuples(st.sampled_from(TABLES), INDEX), PTE, max_size=24),
       st.lists(STEP, min_size=1, max_size=30), EPT_RIGHTS)
def test_under_ept_no_access_reaches_a_page_the_ept_does_not_allow(pdes, ptes, steps, rights):
    full = bytearray(FRAMES_4G)
    full[:RAM_PAGES] = bytes(rights)
    full[0xFEE00] = EPT_MMIO
    run_steps(MODE_EPT, pdes, ptes, steps, bytes(full))
