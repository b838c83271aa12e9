"""The page-table walker faults, translates and marks pages exactly as QEMU 7.2's MMU does.

Page tables are built in a small sparse physical memory that records every write, so the
tests can say not only which bits end up set but whether the walker wrote at all. The last
test runs a probe guest on qemu-system-i386 over a few hundred page-table cases and compares
every error code, CR2 and resulting PDE/PTE with the walker's.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.machine.faults import BusError, GuestFault
from hypervisor.memory.walker import EventMemory, GuestAddressSpace, Paging, translate

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
PF_P, PF_W, PF_U, PF_RSVD, PF_ID = 1, 2, 4, 8, 0x10
CR0_PE, CR0_WP, CR0_PG = 1, 1 << 16, 1 << 31
CR4_PSE, CR4_PAE, CR4_SMEP = 1 << 4, 1 << 5, 1 << 20
EFER_NXE = 1 << 11

PD = 0x10000            # page directory
PT = 0x11000            # a page table
PT2 = 0x12000
FRAME = 0x20000         # a data page
RAM = 8 << 20


class SparsePhys:
    """Guest-physical memory for tests: zero-filled, RAM-sized, every write recorded."""

    def __init__(self, size: int = RAM):
        self.size = size
        self.pages: dict[int, bytearray] = {}
        self.writes: list[tuple[int, bytes]] = []

    def _check(self, paddr: int, length: int) -> None:
        if paddr < 0 or paddr + length > self.size:
            raise BusError(paddr, length)

    def read(self, paddr: int, length: int) -> bytes:
        self._check(paddr, length)
        out = bytearray()
        while length:
            page, off = divmod(paddr, 0x1000)
            n = min(length, 0x1000 - off)
            out += self.pages.get(page, bytes(0x1000))[off:off + n]
            paddr += n
            length -= n
        return bytes(out)

    def write(self, paddr: int, data: bytes) -> None:
        self._check(paddr, len(data))
        self.writes.append((paddr, bytes(data)))
        self.poke(paddr, data)

    def poke(self, paddr: int, data: bytes) -> None:
        """Set memory without recording it (building the tables)."""
        for i, b in enumerate(data):
            page, off = divmod(paddr + i, 0x1000)
            self.pages.setdefault(page, bytearray(0x1000))[off] = b

    def read_u32(self, paddr: int) -> int:
        return struct.unpack("<I", self.read(paddr, 4))[0]

    def write_u32(self, paddr: int, value: int) -> None:
        self.write(paddr, struct.pack("<I", value))

    def set_u32(self, paddr: int, value: int) -> None:
        self.poke(paddr, struct.pack("<I", value))

    def set_u64(self, paddr: int, value: int) -> None:
        self.poke(paddr, struct.pack("<Q", value))

    def u32(self, paddr: int) -> int:
        return self.read_u32(paddr)

    def u64(self, paddr: int) -> int:
        return struct.unpack("<Q", self.read(paddr, 8))[0]


def paging(wp: bool = False, pse: bool = False, smep: bool = False, pae: bool = False,
           nxe: bool = False, cr3: int = PD) -> Paging:
    return Paging(cr0=CR0_PE | CR0_PG | (CR0_WP if wp else 0), cr3=cr3,
                  cr4=(CR4_PSE if pse else 0) | (CR4_SMEP if smep else 0) | (CR4_PAE if pae else 0),
                  efer=EFER_NXE if nxe else 0)


def pde_addr(linear: int) -> int:
    return PD + (linear >> 22) * 4


def pte_addr(linear: int, table: int = PT) -> int:
    return table + ((linear >> 12) & 0x3FF) * 4


def map_4k(phys: SparsePhys, linear: int, frame: int = FRAME, pde_flags: int = P | RW | US,
           pte_flags: int = P | RW | US, table: int = PT) -> None:
    phys.set_u32(pde_addr(linear), table | pde_flags)
    phys.set_u32(pte_addr(linear, table), frame | pte_flags)


def fault_of(phys, pg, linear, **access) -> GuestFault:
    with pytest.raises(GuestFault) as info:
        translate(phys, pg, linear, **access)
    return info.value


LIN = 0x00403123        # PDE 1, PTE 3, offset 0x123


# ---- paging off ---------------------------------------------------------------------------

@given(linear=st.integers(0, 2**32 - 1), cr3=st.integers(0, 2**32 - 1),
       cr4=st.integers(0, 2**32 - 1), write=st.booleans(), user=st.booleans())
def test_with_paging_off_translation_is_the_identity_and_touches_nothing(linear, cr3, cr4, write, user):
    phys = SparsePhys()
    pg = Paging(cr0=CR0_PE | CR0_WP, cr3=cr3, cr4=cr4)
    assert not pg.enabled
    assert translate(phys, pg, linear, write=write, user=user) == linear
    assert phys.writes == []


def test_paging_enabled_follows_cr0_pg_only():
    assert Paging(cr0=CR0_PG, cr3=0, cr4=0).enabled
    assert not Paging(cr0=CR0_PE | CR0_WP, cr3=PD, cr4=CR4_PSE).enabled


# ---- translation --------------------------------------------------------------------------

@given(pde_index=st.integers(0, 1023), pte_index=st.integers(0, 1023),
       offset=st.integers(0, 0xFFF), frame=st.integers(0, 0xFFFFF))
def test_a_4k_mapping_puts_the_frame_from_the_pte_under_the_page_offset(pde_index, pte_index, offset, frame):
    phys = SparsePhys()
    linear = pde_index << 22 | pte_index << 12 | offset
    map_4k(phys, linear, frame=frame << 12)
    assert translate(phys, paging(), linear) == frame << 12 | offset


def test_linear_addresses_are_cut_to_32_bits():
    phys = SparsePhys()
    map_4k(phys, LIN)
    assert translate(phys, paging(), LIN + (1 << 32)) == FRAME | 0x123


# ---- present bits and the error code ------------------------------------------------------

@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("user", [False, True])
def test_a_not_present_pde_faults_with_p_clear_and_the_access_bits(write, user):
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0xFFFFFFFE)          # everything but P
    fault = fault_of(phys, paging(), LIN, write=write, user=user)
    assert (fault.vector, fault.cr2) == (14, LIN)
    assert fault.error_code == (PF_W if write else 0) | (PF_U if user else 0)
    assert phys.writes == []


def test_a_not_present_pte_faults_but_the_pde_is_already_marked_accessed():
    phys = SparsePhys()
    map_4k(phys, LIN, pte_flags=RW | US)
    fault = fault_of(phys, paging(), LIN, write=True)
    assert fault.error_code == PF_W
    assert phys.u32(pde_addr(LIN)) == PT | P | RW | US | A
    assert phys.writes == [(pde_addr(LIN), struct.pack("<I", PT | P | RW | US | A))]


# ---- U/S and R/W on both levels -----------------------------------------------------------

@pytest.mark.parametrize("pde_us,pte_us", [(0, US), (US, 0), (0, 0)])
def test_user_access_to_a_page_supervisor_at_either_level_is_a_protection_fault(pde_us, pte_us):
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | RW | pde_us, pte_flags=P | RW | pte_us)
    fault = fault_of(phys, paging(), LIN, user=True)
    assert fault.error_code == PF_P | PF_U
    assert translate(phys, paging(), LIN, user=False) == FRAME | 0x123


@pytest.mark.parametrize("pde_rw,pte_rw", [(0, RW), (RW, 0), (0, 0)])
def test_user_write_to_a_page_read_only_at_either_level_faults_whatever_wp_says(pde_rw, pte_rw):
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | US | pde_rw, pte_flags=P | US | pte_rw)
    for wp in (False, True):
        fault = fault_of(phys, paging(wp=wp), LIN, write=True, user=True)
        assert fault.error_code == PF_P | PF_W | PF_U
    assert translate(phys, paging(), LIN, user=True) == FRAME | 0x123


def test_supervisor_write_to_a_read_only_page_succeeds_with_wp_clear_and_faults_with_wp_set():
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | US, pte_flags=P | US)
    assert fault_of(phys, paging(wp=True), LIN, write=True).error_code == PF_P | PF_W
    assert phys.u32(pte_addr(LIN)) & (A | D) == 0
    assert translate(phys, paging(wp=False), LIN, write=True) == FRAME | 0x123
    assert phys.u32(pte_addr(LIN)) & (A | D) == A | D


# ---- fetches: I/D only with SMEP (or NXE with PAE) ----------------------------------------

def test_a_fetch_fault_without_smep_or_pae_nx_has_no_id_bit():
    phys = SparsePhys()
    fault = fault_of(phys, paging(), LIN, fetch=True, user=True)
    assert fault.error_code == PF_U
    fault = fault_of(phys, paging(nxe=True), LIN, fetch=True)      # NXE without PAE: no I/D
    assert fault.error_code == 0


def test_with_smep_a_fetch_fault_sets_id_and_supervisor_fetch_from_a_user_page_faults():
    phys = SparsePhys()
    map_4k(phys, LIN)
    fault = fault_of(phys, paging(smep=True), LIN, fetch=True)
    assert fault.error_code == PF_P | PF_ID
    assert translate(phys, paging(smep=True), LIN, fetch=True, user=True) == FRAME | 0x123
    assert translate(phys, paging(smep=True), LIN) == FRAME | 0x123     # reads are not fetches
    assert translate(phys, paging(), LIN, fetch=True) == FRAME | 0x123


def test_with_smep_a_not_present_fetch_has_id_but_not_p():
    assert fault_of(SparsePhys(), paging(smep=True), LIN, fetch=True).error_code == PF_ID


# ---- large pages --------------------------------------------------------------------------

def test_with_pse_a_ps_pde_maps_4_mib_and_pse36_bits_give_the_high_address():
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0x00C00000 | PS | P | RW)
    assert translate(phys, paging(pse=True), LIN) == 0x00C00000 | (LIN & 0x3FFFFF)
    phys.set_u32(pde_addr(LIN), 0x00C00000 | 0x2000 | PS | P | RW)   # PDE bit 13 = address bit 32
    assert translate(phys, paging(pse=True), LIN) == (1 << 32) | 0x00C00000 | (LIN & 0x3FFFFF)


def test_without_pse_the_ps_bit_is_ignored_and_the_pde_points_to_a_page_table():
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | RW | PS)
    assert translate(phys, paging(pse=False), LIN) == FRAME | 0x123
    assert phys.u32(pde_addr(LIN)) == PT | P | RW | PS | A


@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("user", [False, True])
def test_bit_21_of_a_4_mib_pde_is_a_reserved_bit_fault_without_p(write, user):
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0x00400000 | 1 << 21 | PS | P | RW | US)
    fault = fault_of(phys, paging(pse=True), LIN, write=write, user=user)
    assert fault.error_code == PF_RSVD | (PF_W if write else 0) | (PF_U if user else 0)
    assert phys.writes == []


def test_a_4_mib_page_takes_its_rights_from_the_pde_alone():
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0x00400000 | PS | P | US)
    pg = paging(pse=True, wp=True)
    assert fault_of(phys, pg, LIN, write=True, user=True).error_code == PF_P | PF_W | PF_U
    assert fault_of(phys, pg, LIN, write=True).error_code == PF_P | PF_W
    assert translate(phys, pg, LIN, user=True) == 0x00400000 | (LIN & 0x3FFFFF)


# ---- accessed and dirty bits --------------------------------------------------------------

def test_a_read_sets_accessed_in_pde_and_pte_and_dirty_nowhere():
    phys = SparsePhys()
    map_4k(phys, LIN)
    translate(phys, paging(), LIN)
    assert phys.u32(pde_addr(LIN)) == PT | P | RW | US | A
    assert phys.u32(pte_addr(LIN)) == FRAME | P | RW | US | A


def test_a_write_sets_dirty_in_the_pte_and_never_in_a_pde_that_points_to_a_table():
    phys = SparsePhys()
    map_4k(phys, LIN)
    translate(phys, paging(), LIN, write=True)
    assert phys.u32(pde_addr(LIN)) == PT | P | RW | US | A
    assert phys.u32(pte_addr(LIN)) == FRAME | P | RW | US | A | D


def test_bits_already_set_are_not_written_again():
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | RW | US | A, pte_flags=P | RW | US | A | D)
    translate(phys, paging(), LIN, write=True)
    translate(phys, paging(), LIN)
    assert phys.writes == []
    map_4k(phys, LIN, pde_flags=P | RW | US | A, pte_flags=P | RW | US | A)
    translate(phys, paging(), LIN)
    assert phys.writes == []
    translate(phys, paging(), LIN, write=True)
    assert phys.writes == [(pte_addr(LIN), struct.pack("<I", FRAME | P | RW | US | A | D))]


def test_a_protection_fault_marks_the_pde_accessed_but_leaves_the_pte_alone():
    phys = SparsePhys()
    map_4k(phys, LIN, pte_flags=P)
    fault_of(phys, paging(), LIN, user=True)
    assert phys.u32(pde_addr(LIN)) & A
    assert phys.u32(pte_addr(LIN)) == FRAME | P


def test_other_entry_bits_survive_the_accessed_and_dirty_update():
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=P | RW | US | PWT | PCD | 0xE00, pte_flags=P | RW | US | G | PCD | 0xE00)
    translate(phys, paging(), LIN, write=True)
    assert phys.u32(pde_addr(LIN)) == PT | P | RW | US | PWT | PCD | 0xE00 | A
    assert phys.u32(pte_addr(LIN)) == FRAME | P | RW | US | G | PCD | 0xE00 | A | D


def test_a_4_mib_page_gets_accessed_and_dirty_in_its_pde():
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0x00400000 | PS | P | RW)
    translate(phys, paging(pse=True), LIN)
    assert phys.u32(pde_addr(LIN)) == 0x00400000 | PS | P | RW | A
    translate(phys, paging(pse=True), LIN, write=True)
    assert phys.u32(pde_addr(LIN)) == 0x00400000 | PS | P | RW | A | D
    count = len(phys.writes)
    translate(phys, paging(pse=True), LIN, write=True)
    assert len(phys.writes) == count


def test_set_ad_false_walks_without_writing():
    phys = SparsePhys()
    map_4k(phys, LIN)
    assert translate(phys, paging(), LIN, write=True, set_ad=False) == FRAME | 0x123
    map_4k(phys, LIN, pte_flags=RW)
    fault_of(phys, paging(), LIN, set_ad=False)
    assert phys.writes == []


@settings(max_examples=300)
@given(pde=st.integers(0, 0xFFF), pte=st.integers(0, 0xFFF), write=st.booleans(),
       user=st.booleans(), fetch=st.booleans(), wp=st.booleans())
def test_4k_walks_agree_with_the_sdm_table_of_rights_and_error_codes(pde, pte, write, user, fetch, wp):
    """An independent statement of 32-bit paging (SDM 4.6, QEMU's error code) for every flag mix."""
    fetch = fetch and not write
    phys = SparsePhys()
    map_4k(phys, LIN, pde_flags=pde, pte_flags=pte)
    present = pde & P and pte & P
    allowed = present and (not user or (pde & pte & US)) and \
        (not write or (pde & pte & RW) or (not user and not wp))
    code = (PF_W if write else 0) | (PF_U if user else 0)
    pg = paging(wp=wp)
    if allowed:
        assert translate(phys, pg, LIN, write=write, user=user, fetch=fetch) == FRAME | 0x123
        assert phys.u32(pte_addr(LIN)) == FRAME | pte | A | (D if write else 0)
    else:
        fault = fault_of(phys, pg, LIN, write=write, user=user, fetch=fetch)
        assert fault.error_code == code | (PF_P if present else 0)
        assert phys.u32(pte_addr(LIN)) == FRAME | pte
    assert phys.u32(pde_addr(LIN)) == PT | pde | (A if pde & P else 0)


# ---- memory outside RAM -------------------------------------------------------------------

def test_a_pde_that_points_outside_ram_is_a_bus_error_not_a_guest_fault():
    phys = SparsePhys()
    phys.set_u32(pde_addr(LIN), 0xF0000000 | P | RW)
    with pytest.raises(BusError) as info:
        translate(phys, paging(), LIN)
    assert info.value.address == 0xF0000000 + ((LIN >> 12) & 0x3FF) * 4
    assert isinstance(info.value, IndexError)


def test_cr3_outside_ram_is_a_bus_error():
    with pytest.raises(BusError):
        translate(SparsePhys(), paging(cr3=0xFFFFF000), LIN)


def test_a_plain_index_error_from_physical_memory_becomes_a_bus_error():
    class OldMemory(SparsePhys):
        def read_u32(self, paddr):
            raise IndexError("outside RAM")
    with pytest.raises(BusError):
        translate(OldMemory(), paging(), LIN)


def test_the_walker_works_over_the_real_guest_memory():
    from hypervisor.machine.memory import GuestMemory, MachineMemory
    ram = GuestMemory(MachineMemory(4 << 20), 2 << 20)
    ram.write_u32(pde_addr(LIN), PT | P | RW)
    ram.write_u32(pte_addr(LIN), FRAME | P | RW)
    assert translate(ram, paging(), LIN, write=True) == FRAME | 0x123
    assert ram.read_u32(pte_addr(LIN)) == FRAME | P | RW | A | D
    ram.write_u32(pde_addr(LIN), 0x00300000 | P | RW)        # a page table beyond 2 MiB of RAM
    with pytest.raises(BusError):
        translate(ram, paging(), LIN)


# ---- the address space: spans, atomicity, wrap-around -------------------------------------

def space(phys, pg):
    return GuestAddressSpace(phys, lambda: pg)


def test_a_read_across_a_page_boundary_joins_two_unrelated_frames():
    phys = SparsePhys()
    map_4k(phys, 0x00400000, frame=0x30000)
    map_4k(phys, 0x00401000, frame=0x50000)
    phys.poke(0x30FFE, b"ab")
    phys.poke(0x50000, b"cd")
    assert space(phys, paging()).read(0x00400FFE, 4) == b"abcd"
    assert space(phys, paging()).read_u32(0x00400FFE) == int.from_bytes(b"abcd", "little")


def test_a_write_that_faults_on_its_second_page_writes_nothing_and_reports_that_page():
    phys = SparsePhys()
    map_4k(phys, 0x00400000, frame=0x30000)
    map_4k(phys, 0x00401000, frame=0x50000, pte_flags=P | US)     # read-only
    with pytest.raises(GuestFault) as info:
        space(phys, paging(wp=True)).write(0x00400FFE, b"WXYZ")
    assert (info.value.error_code, info.value.cr2) == (PF_P | PF_W, 0x00401000)
    assert phys.read(0x30FFE, 2) == b"\0\0"
    assert phys.u32(pte_addr(0x00400000)) & D           # the first page was probed: QEMU does too


def test_a_fault_on_the_first_page_reports_the_address_itself():
    with pytest.raises(GuestFault) as info:
        space(SparsePhys(), paging()).read(0x00400FFE, 4)
    assert info.value.cr2 == 0x00400FFE


def test_a_write_across_a_page_boundary_lands_in_both_frames():
    phys = SparsePhys()
    map_4k(phys, 0x00400000, frame=0x30000)
    map_4k(phys, 0x00401000, frame=0x50000)
    space(phys, paging()).write_u32(0x00400FFF, 0x44332211)
    assert phys.read(0x30FFF, 1) == b"\x11" and phys.read(0x50000, 3) == b"\x22\x33\x44"


def test_linear_addresses_wrap_at_4_gib():
    phys = SparsePhys()
    phys.set_u32(PD + 1023 * 4, PT | P | RW)
    phys.set_u32(PT + 1023 * 4, 0x30000 | P | RW)
    phys.set_u32(PD, PT2 | P | RW)
    phys.set_u32(PT2, 0x50000 | P | RW)
    phys.poke(0x30FFE, b"ab")
    phys.poke(0x50000, b"cd")
    assert space(phys, paging()).read(0xFFFFFFFE, 4) == b"abcd"


def test_with_paging_off_the_space_reads_physical_memory_and_wraps_too():
    phys = SparsePhys()
    phys.poke(0x1234, b"hello")
    assert space(phys, Paging(0, 0, 0)).read(0x1234, 5) == b"hello"
    with pytest.raises(BusError):
        space(phys, Paging(0, 0, 0)).read(0xFFFFFFFE, 4)


def test_the_space_follows_the_current_paging_at_every_access():
    phys = SparsePhys()
    map_4k(phys, LIN)
    phys.poke(FRAME | 0x123, b"\x99")
    current = [Paging(0, 0, 0)]
    s = GuestAddressSpace(phys, lambda: current[0])
    assert s.translate(LIN) == LIN
    current[0] = paging()
    assert s.read(LIN, 1) == b"\x99"


def test_the_space_reads_with_the_access_rights_it_is_given():
    phys = SparsePhys()
    map_4k(phys, LIN, pte_flags=P | RW)                     # supervisor page
    s = space(phys, paging())
    assert s.read_u16(LIN) == 0
    with pytest.raises(GuestFault) as info:
        s.read_u16(LIN, user=True)
    assert info.value.error_code == PF_P | PF_U
    with pytest.raises(GuestFault) as info:
        s.write_u16(LIN, 1, user=True)
    assert info.value.error_code == PF_P | PF_W | PF_U


# ---- PAE (QEMU 7.2's walk, for when a guest turns it on) ----------------------------------

PDPT = 0x13000
PAE_PD = 0x14000
PAE_PT = 0x15000
NX = 1 << 63


def pae_tables(phys, linear, *, pdpte=P, pde=P | RW | US, pte=P | RW | US, frame=FRAME):
    phys.set_u64(PDPT + (linear >> 30) * 8, PAE_PD | pdpte)
    phys.set_u64(PAE_PD + ((linear >> 21) & 0x1FF) * 8, PAE_PT | pde)
    phys.set_u64(PAE_PT + ((linear >> 12) & 0x1FF) * 8, frame | pte)


def test_pae_walks_three_levels_and_marks_all_of_them_accessed():
    phys = SparsePhys()
    linear = 0xC0203123
    pae_tables(phys, linear)
    pg = paging(pae=True, cr3=PDPT)
    assert translate(phys, pg, linear, write=True) == FRAME | 0x123
    assert phys.u64(PDPT + 3 * 8) == PAE_PD | P | A
    assert phys.u64(PAE_PD + 1 * 8) == PAE_PT | P | RW | US | A
    assert phys.u64(PAE_PT + 3 * 8) == FRAME | P | RW | US | A | D


def test_pae_nx_faults_fetches_with_nxe_and_is_a_reserved_bit_without():
    phys = SparsePhys()
    linear = 0x00003123
    pae_tables(phys, linear, pte=P | RW | US | NX)
    fault = fault_of(phys, paging(pae=True, nxe=True, cr3=PDPT), linear, fetch=True)
    assert fault.error_code == PF_P | PF_ID
    assert translate(phys, paging(pae=True, nxe=True, cr3=PDPT), linear) == FRAME | 0x123
    fault = fault_of(phys, paging(pae=True, cr3=PDPT), linear)
    assert fault.error_code == PF_RSVD


def test_pae_2_mib_pages_need_no_pse_and_check_their_low_address_bits():
    phys = SparsePhys()
    linear = 0x00603123
    phys.set_u64(PDPT, PAE_PD | P)
    phys.set_u64(PAE_PD + 3 * 8, 0x00400000 | PS | P | RW)
    assert translate(phys, paging(pae=True, cr3=PDPT), linear) == 0x00400000 | (linear & 0x1FFFFF)
    phys.set_u64(PAE_PD + 3 * 8, 0x00400000 | 1 << 13 | PS | P | RW)
    assert fault_of(phys, paging(pae=True, cr3=PDPT), linear).error_code == PF_RSVD


def test_pae_address_bits_above_36_are_reserved():
    phys = SparsePhys()
    linear = 0x00003123
    pae_tables(phys, linear, frame=1 << 36 | FRAME)
    assert fault_of(phys, paging(pae=True, cr3=PDPT), linear, write=True).error_code == PF_RSVD | PF_W


# ---- the referee: the same cases on qemu-system-i386 --------------------------------------
# A probe guest identity-maps its first 8 MiB (user-accessible, so its ring-3 stubs can run),
# then for each case writes one PDE (and PTE), sets CR0.WP and CR4.PSE, reloads CR3 and makes
# one access at ring 0 or ring 3: a dword read, a dword write, or a call into the page (which
# holds a `ret`). Its #PF handler records the error code and CR2. Each case prints one line:
# error code (0xffffffff: no fault), CR2, and the PDE and PTE as the access left them.

Q_PD = 0x200000              # the probe's page directory; identity tables at +0x1000, +0x2000
Q_PT = 0x300000              # one page table per 4 KiB case, up to 0x400000
Q_FRAME = 0x500000           # the 4 KiB page every 4 KiB case maps
Q_BIG = 0x400000             # the 4 MiB page
Q_OFFSET = 0x123
READ, WRITE, FETCH = 0, 1, 2

PROBE_GUEST = """
PD = 0x200000
main:
    mov esi, s_name
    call puts
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov eax, 14
    mov ebx, k_pf
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x80
    mov ebx, k_back
    mov cl, 0xee
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax
    mov edi, PD
    xor eax, eax
    mov ecx, 0x400
    rep stosd
    mov edi, 0x201000
    mov eax, 0x7
    mov ecx, 0x800
q_id_loop:
    mov dword ptr [edi], eax
    add edi, 4
    add eax, 0x1000
    dec ecx
    jnz q_id_loop
    mov dword ptr [PD], 0x201007
    mov dword ptr [PD + 4], 0x202007
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov ebp, q_cases
q_next:
    cmp ebp, q_cases_end
    jae q_done
    call q_run
    add ebp, 32
    jmp q_next
q_done:
    mov al, 0
    ret

q_run:
    mov eax, dword ptr [ebp]
    mov edx, dword ptr [ebp + 4]
    mov dword ptr [eax], edx
    mov eax, dword ptr [ebp + 8]
    test eax, eax
    jz q_no_pte
    mov edx, dword ptr [ebp + 12]
    mov dword ptr [eax], edx
q_no_pte:
    mov eax, dword ptr [ebp + 24]
    test eax, eax
    jz q_no_target
    mov byte ptr [eax], 0xc3
q_no_target:
    mov eax, cr4
    and eax, 0xffffffef
    test dword ptr [ebp + 20], 2
    jz q_pse_set
    or eax, 0x10
q_pse_set:
    mov cr4, eax
    mov eax, cr0
    and eax, 0xfffeffff
    test dword ptr [ebp + 20], 1
    jz q_wp_set
    or eax, 0x10000
q_wp_set:
    mov cr0, eax
    mov eax, cr3
    mov cr3, eax
    mov dword ptr [q_saved_esp], esp
    mov esi, dword ptr [ebp + 16]
    mov eax, dword ptr [ebp + 20]
    test eax, 0x100
    jnz q_user
    shr eax, 4
    and eax, 3
    cmp eax, 1
    je q_k_write
    cmp eax, 2
    je q_k_fetch
    mov eax, dword ptr [esi]
    jmp q_no_fault
q_k_write:
    mov dword ptr [esi], eax
    jmp q_no_fault
q_k_fetch:
    call esi
    jmp q_no_fault
q_user:
    shr eax, 4
    and eax, 3
    mov ebx, u_read
    cmp eax, 1
    jne q_u1
    mov ebx, u_write
q_u1:
    cmp eax, 2
    jne q_u2
    mov ebx, u_fetch
q_u2:
    mov eax, SEL_UDATA
    mov ds, eax
    mov es, eax
    push eax
    mov eax, q_ustack_top
    push eax
    push 0x2
    mov eax, SEL_UCODE
    push eax
    push ebx
    iretd
u_read:
    mov eax, dword ptr [esi]
    int 0x80
u_write:
    mov dword ptr [esi], eax
    int 0x80
u_fetch:
    call esi
    int 0x80
k_back:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov esp, dword ptr [q_saved_esp]
q_no_fault:
    mov dword ptr [q_ec], 0xffffffff
    mov dword ptr [q_cr2], 0
    jmp q_report
k_pf:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    pop eax
    mov dword ptr [q_ec], eax
    mov eax, cr2
    mov dword ptr [q_cr2], eax
    mov esp, dword ptr [q_saved_esp]
q_report:
    mov esi, s_ec
    call puts
    mov eax, dword ptr [q_ec]
    call puthex32
    mov esi, s_cr2
    call puts
    mov eax, dword ptr [q_cr2]
    call puthex32
    mov esi, s_pde
    call puts
    mov eax, dword ptr [ebp]
    mov eax, dword ptr [eax]
    call puthex32
    mov esi, s_pte
    call puts
    mov eax, dword ptr [ebp + 8]
    test eax, eax
    jz q_r1
    mov eax, dword ptr [eax]
q_r1:
    call puthex32
    call putnl
    ret

s_name: .asciz "walker probe\\n"
s_ec: .asciz "ec="
s_cr2: .asciz " cr2="
s_pde: .asciz " pde="
s_pte: .asciz " pte="
.balign 4, 0
q_saved_esp: .long 0
q_ec: .long 0
q_cr2: .long 0
q_ustack: .fill 0x400, 1, 0
q_ustack_top:
.balign 4, 0
q_cases:
{cases}
q_cases_end:

.include "runtime.S"
"""


def probe_cases() -> list[dict]:
    """Every U/S and R/W mix on both levels, 4 MiB pages, and the odd entries."""
    cases = []

    def add(pde, pte, kind, user, wp, pse, big=False):
        cases.append(dict(pde=pde, pte=pte, kind=kind, user=user, wp=wp, pse=pse, big=big))

    rights = [P | RW | US, P | US, P | RW, P]
    for pde in rights:
        for pte in rights:
            for kind in (READ, WRITE, FETCH):
                for user in (False, True):
                    for wp in (False, True):
                        add(pde, pte, kind, user, wp, pse=False)
    for pde in rights:
        for kind in (READ, WRITE, FETCH):
            for user in (False, True):
                for wp in (False, True):
                    add(pde | PS, None, kind, user, wp, pse=True, big=True)
    for kind in (READ, WRITE, FETCH):
        for user in (False, True):
            add(P | RW | US | PS | 1 << 21, None, kind, user, False, pse=True, big=True)  # RSVD
            add(0xFFFFFFFE, None, kind, user, False, pse=False, big=True)     # PDE not present
            add(P | RW | US, 0xFFFFFFFE & ~0xFFF, kind, user, False, pse=False)  # PTE not present
    add(P | RW | US | PS, P | RW | US, WRITE, False, False, pse=False)        # PS ignored
    add(P | RW | US | A | PWT | PCD | 0xE00, P | RW | US | A | D | G | 0xE00, WRITE, True, True, pse=False)
    add(P | RW | US | A, P | RW | US | A, WRITE, True, True, pse=False)
    add(P | RW | US | PS | A | D | G, None, WRITE, True, True, pse=True, big=True)
    return cases


def case_layout(index: int, table_index: int, case: dict) -> dict:
    pde_index = 2 + index
    linear = pde_index << 22 | Q_OFFSET
    entry_pde = Q_PD + pde_index * 4
    if case["big"]:
        pde = case["pde"] if not case["pde"] & P else (Q_BIG | case["pde"])
        pte_at, pte, target = 0, 0, Q_BIG + Q_OFFSET
    else:
        table = Q_PT + table_index * 0x1000
        pde, pte_at, pte, target = table | case["pde"], table, Q_FRAME | case["pte"], Q_FRAME + Q_OFFSET
    flags = (1 if case["wp"] else 0) | (2 if case["pse"] else 0) | case["kind"] << 4 | \
        (0x100 if case["user"] else 0)
    return dict(linear=linear, pde_at=entry_pde, pde=pde, pte_at=pte_at, pte=pte, flags=flags,
                target=target if case["kind"] == FETCH else 0)


def walker_line(case: dict, layout: dict) -> str:
    phys = SparsePhys(64 << 20)
    phys.set_u32(layout["pde_at"], layout["pde"])
    if layout["pte_at"]:
        phys.set_u32(layout["pte_at"], layout["pte"])
    pg = Paging(cr0=CR0_PE | CR0_PG | (CR0_WP if case["wp"] else 0), cr3=Q_PD,
                cr4=CR4_PSE if case["pse"] else 0)
    ec, cr2 = 0xFFFFFFFF, 0
    try:
        translate(phys, pg, layout["linear"], write=case["kind"] == WRITE,
                  fetch=case["kind"] == FETCH, user=case["user"])
    except GuestFault as fault:
        ec, cr2 = fault.error_code, fault.cr2
    pte = phys.u32(layout["pte_at"]) if layout["pte_at"] else 0
    return f"ec={ec:#010x} cr2={cr2:#010x} pde={phys.u32(layout['pde_at']):#010x} pte={pte:#010x}"


@pytest.mark.qemu
def test_the_walker_matches_qemu_on_every_probe_case(tmp_path):
    from pathlib import Path

    from hypervisor.image import build_image
    from tests.qemu import run_qemu

    cases = probe_cases()
    tables = [sum(not c["big"] for c in cases[:i]) for i in range(len(cases))]
    assert tables[-1] < (Q_BIG - Q_PT) // 0x1000 and len(cases) < 1022
    layouts = [case_layout(i, t, c) for i, (t, c) in enumerate(zip(tables, cases))]
    rows = "\n".join(".long {pde_at:#x}, {pde:#x}, {pte_at:#x}, {pte:#x}, {linear:#x}, {flags:#x}, "
                     "{target:#x}, 0".format(**lay) for lay in layouts)
    guests = Path(__file__).resolve().parents[2] / "guests"
    source = tmp_path / "walker_probe.S"
    source.write_text(PROBE_GUEST.replace("{cases}", rows))
    (tmp_path / "runtime.S").write_text((guests / "runtime.S").read_text())
    image = tmp_path / "walker_probe.bin"
    image.write_bytes(build_image(source))
    console, exit_code = run_qemu(image)
    lines = console.decode().splitlines()
    assert lines[0] == "walker probe" and exit_code == 0, console[-400:]
    expected = [walker_line(c, lay) for c, lay in zip(cases, layouts)]
    mismatches = [(i, cases[i], got, want) for i, (got, want) in enumerate(zip(lines[1:], expected))
                  if got != want]
    assert len(lines) - 1 == len(cases)
    assert mismatches == []


# -- EventMemory: the one-pass delivery's walks, remembered across events ---------------------
def event_memory(phys: SparsePhys):
    """An EventMemory over ``phys`` whose walk is this file's reference, counted."""
    walks = []

    def fast(pg, linear, write, user):
        walks.append(linear >> 12)
        return translate(phys, pg, linear, write=write, user=user)
    memory = EventMemory(GuestAddressSpace(phys, lambda: paging(), fast), phys)
    return memory, walks


def test_an_event_walks_each_page_once_and_the_next_event_compares_the_entries_instead():
    phys = SparsePhys()
    map_4k(phys, 0x400000, FRAME)
    phys.set_u32(FRAME, 0x11223344)
    memory, walks = event_memory(phys)
    for _ in range(3):
        memory.begin(paging())
        assert memory.read(0x400000, 4) == struct.pack("<I", 0x11223344)
        assert memory.read(0x400004, 4) == bytes(4)
    assert walks == [0x400]                     # A set by the first walk: nothing else to write


def test_an_entry_changed_between_events_is_walked_again():
    phys = SparsePhys()
    map_4k(phys, 0x400000, FRAME)
    phys.set_u32(FRAME + 0x1000, 0x55)
    memory, walks = event_memory(phys)
    memory.begin(paging())
    memory.read(0x400000, 4)
    phys.set_u32(pte_addr(0x400000), (FRAME + 0x1000) | P | RW | US)     # another frame, A clear
    memory.begin(paging())
    assert memory.read(0x400000, 4) == struct.pack("<I", 0x55)
    assert phys.u32(pte_addr(0x400000)) & A                             # the walk set A again
    phys.set_u32(pde_addr(0x400000), PT2 | P | RW | US)                 # the PDE: a table not present
    memory.begin(paging())
    with pytest.raises(IndexError):
        memory.read(0x400000, 4)
    assert walks == [0x400, 0x400, 0x400]


def test_a_store_after_a_read_walks_again_to_set_dirty():
    phys = SparsePhys()
    map_4k(phys, 0x400000, FRAME)
    memory, walks = event_memory(phys)
    memory.begin(paging())
    memory.read(0x400000, 4)
    memory.begin(paging())
    memory.write(0x400000, b"\1\2\3\4")
    assert phys.u32(pte_addr(0x400000)) & D and len(walks) == 2
