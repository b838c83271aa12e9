"""The frame table never hands a frame out twice nor loses one, and every guest-physical access
goes through the P2M into the domain's own frames."""
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc

from hypervisor.machine.faults import BusError
from hypervisor.machine.memory import (
    EXTENT_FRAMES,
    PAGE_SIZE,
    Extent,
    FrameError,
    FrameType,
    GuestMemory,
    MachineMemory,
    OutOfMachineMemory,
)

MIB = 1 << 20
EXTENT = EXTENT_FRAMES * PAGE_SIZE


# == the pool ==============================================================================
def test_a_domain_gets_whole_extents_from_the_top_and_its_frame_0_is_not_machine_frame_0():
    machine = MachineMemory(8 * MIB)
    mfns = machine.allocate(owner=3, frames=2 * EXTENT_FRAMES)
    assert mfns[:EXTENT_FRAMES] == list(range(3 * EXTENT_FRAMES, 4 * EXTENT_FRAMES))
    assert mfns[EXTENT_FRAMES:] == list(range(2 * EXTENT_FRAMES, 3 * EXTENT_FRAMES))
    assert machine.free_frames == 2 * EXTENT_FRAMES
    assert all(machine.owner_of(m) == 3 and machine.type_of(m) is FrameType.WRITABLE for m in mfns)
    assert all(machine.ref_count(m) == 0 and machine.type_count(m) == 0 for m in mfns)


def test_a_domain_that_fills_the_machine_still_does_not_get_machine_frame_0_as_its_frame_0():
    machine = MachineMemory(4 * MIB)
    assert machine.allocate(0, machine.frames)[0] != 0


def test_when_only_the_bottom_extent_is_left_frame_0_goes_to_the_end_of_the_domain():
    machine = MachineMemory(4 * MIB)
    machine.allocate(1, EXTENT_FRAMES)                  # takes the top extent
    mfns = machine.allocate(2, EXTENT_FRAMES)
    assert mfns[0] != 0 and sorted(mfns) == list(range(EXTENT_FRAMES))
    assert mfns[-1] == 0


def test_a_one_frame_domain_refuses_machine_frame_0_even_if_it_is_the_last_free_one():
    machine = MachineMemory(2 * PAGE_SIZE, extent_frames=2)
    machine.allocate(1, 1)                                # frame 1
    with pytest.raises(OutOfMachineMemory, match="frame 0"):
        machine.allocate(2, 1)
    assert machine.free_frames == 1


def test_a_remainder_goes_into_a_partly_used_extent_and_keeps_whole_extents_whole():
    machine = MachineMemory(16 * PAGE_SIZE, extent_frames=4)
    machine.allocate(1, 1)                                # frame 12..15 extent, one frame used
    small = machine.allocate(2, 3)
    assert sorted(m // 4 for m in small) == [3, 3, 3]     # not a fresh extent
    assert machine.free_frames == 12


def test_out_of_memory_is_refused_cleanly_and_changes_nothing():
    machine = MachineMemory(4 * MIB)
    machine.allocate(1, EXTENT_FRAMES + 1)
    before = [machine.owner_of(m) for m in range(machine.frames)]
    with pytest.raises(OutOfMachineMemory):
        machine.allocate(2, EXTENT_FRAMES)
    assert [machine.owner_of(m) for m in range(machine.frames)] == before
    assert machine.free_frames == EXTENT_FRAMES - 1


@pytest.mark.parametrize("owner, frames", [(-1, 1), (None, 1), (0, 0), (0, -5)])
def test_allocate_refuses_a_bad_owner_or_count(owner, frames):
    with pytest.raises(ValueError):
        MachineMemory(4 * MIB).allocate(owner, frames)


def test_a_fragmented_pool_still_satisfies_a_domain_from_scattered_frames():
    machine = MachineMemory(16 * PAGE_SIZE, extent_frames=4)
    for owner in range(15):
        machine.allocate(owner, 1)
    for owner in range(0, 15, 2):
        machine.release_domain(owner)
    mfns = machine.allocate(99, 9)
    assert len(set(mfns)) == 9 and machine.free_frames == 0 and mfns[0] != 0
    assert all(machine.owner_of(m) == 99 for m in mfns)


def test_release_domain_returns_every_frame_zeroed_and_reset():
    machine = MachineMemory(4 * MIB)
    mfns = machine.allocate(5, 10)
    for pfn, mfn in enumerate(mfns):
        machine.set_m2p(mfn, pfn)
        machine.view[mfn * PAGE_SIZE:mfn * PAGE_SIZE + 4] = b"junk"
    machine.get_type_ref(mfns[0], FrameType.PAGE_TABLE_L2)
    machine.set_write_protected(mfns[0], True)
    assert machine.release_domain(5) == 10
    assert machine.free_frames == machine.frames
    for mfn in mfns:
        assert machine.owner_of(mfn) is None and machine.m2p(mfn) is None
        assert machine.type_of(mfn) is FrameType.FREE and machine.type_count(mfn) == 0
        assert not machine.is_write_protected(mfn)
        assert bytes(machine.view[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE]) == bytes(PAGE_SIZE)


def test_a_frame_still_referenced_outlives_its_domain_until_the_last_reference_drops():
    machine = MachineMemory(8 * PAGE_SIZE, extent_frames=8)
    mfns = machine.allocate(1, 8)
    held = mfns[3]
    machine.get_ref(held)                                # e.g. another domain's grant mapping
    machine.view[held * PAGE_SIZE] = 0x5A
    assert machine.release_domain(1) == 7
    assert machine.owner_of(held) == 1 and machine.is_dying(held)
    assert machine.view[held * PAGE_SIZE] == 0x5A        # the mapper still sees the data
    assert held not in machine.allocate(2, 7)            # never handed out meanwhile
    with pytest.raises(OutOfMachineMemory):
        machine.allocate(3, 1)
    with pytest.raises(FrameError, match="dying"):
        machine.get_ref(held)
    assert machine.release_domain(1) == 0                # releasing again frees nothing
    assert machine.put_ref(held) == 0
    assert machine.owner_of(held) is None and not machine.is_dying(held)
    assert machine.view[held * PAGE_SIZE] == 0 and machine.free_frames == 1


def test_release_refuses_a_double_free_and_changes_nothing():
    machine = MachineMemory(4 * MIB)
    mfns = machine.allocate(1, 4)
    with pytest.raises(FrameError, match="twice"):
        machine.release([mfns[0], mfns[1], mfns[0]])
    assert all(machine.owner_of(m) == 1 for m in mfns)
    machine.release(mfns)
    with pytest.raises(FrameError, match="twice"):
        machine.release(mfns[:1])
    assert machine.free_frames == machine.frames


def test_frames_of_lists_an_owners_frames_in_machine_order():
    machine = MachineMemory(4 * MIB)
    a = machine.allocate(1, 3)
    b = machine.allocate(2, 2)
    assert machine.frames_of(1) == sorted(a) and machine.frames_of(2) == sorted(b)
    assert machine.frames_of(7) == []


# == one frame =============================================================================
def test_a_frame_takes_a_type_while_unused_and_refuses_another_while_used():
    machine = MachineMemory(4 * MIB)
    (mfn,) = machine.allocate(1, 1)
    assert machine.get_type_ref(mfn, FrameType.PAGE_TABLE_L1) == 1
    assert machine.get_type_ref(mfn, FrameType.PAGE_TABLE_L1) == 2
    with pytest.raises(FrameError, match="PAGE_TABLE_L1"):
        machine.get_type_ref(mfn, FrameType.WRITABLE)
    with pytest.raises(FrameError):
        machine.set_type(mfn, FrameType.DESCRIPTOR_TABLE)
    assert machine.put_type_ref(mfn) == 1 and machine.put_type_ref(mfn) == 0
    with pytest.raises(FrameError, match="no type use"):
        machine.put_type_ref(mfn)
    machine.set_type(mfn, FrameType.DESCRIPTOR_TABLE)
    assert machine.type_of(mfn) is FrameType.DESCRIPTOR_TABLE
    with pytest.raises(FrameError, match="released"):
        machine.set_type(mfn, FrameType.FREE)


def test_frame_types_are_numbered_as_xens_page_types():
    assert [FrameType.PAGE_TABLE_L1, FrameType.PAGE_TABLE_L4, FrameType.DESCRIPTOR_TABLE,
            FrameType.WRITABLE] == [1, 4, 5, 7]
    assert {t.name for t in FrameType} >= {"FREE", "WRITABLE", "GRANTED"}


def test_references_count_up_and_down_and_never_below_zero():
    machine = MachineMemory(4 * MIB)
    (mfn,) = machine.allocate(1, 1)
    assert machine.get_ref(mfn) == 1 and machine.get_ref(mfn) == 2
    assert machine.put_ref(mfn) == 1 and machine.put_ref(mfn) == 0
    with pytest.raises(FrameError, match="no reference"):
        machine.put_ref(mfn)
    assert machine.owner_of(mfn) == 1                   # a live frame stays when refs hit 0


@pytest.mark.parametrize("operation", [
    lambda m, f: m.get_ref(f), lambda m, f: m.put_ref(f), lambda m, f: m.set_type(f, FrameType.WRITABLE),
    lambda m, f: m.get_type_ref(f, FrameType.WRITABLE), lambda m, f: m.set_write_protected(f, True),
    lambda m, f: m.set_m2p(f, 0),
])
def test_a_free_frame_cannot_be_referenced_typed_protected_or_given_a_pfn(operation):
    machine = MachineMemory(4 * MIB)
    with pytest.raises(FrameError, match="free"):
        operation(machine, 7)


@pytest.mark.parametrize("mfn", [-1, 1024, 10**9])
def test_a_frame_number_outside_the_machine_is_a_frame_error_not_a_wrapped_index(mfn):
    machine = MachineMemory(4 * MIB)
    for query in (machine.owner_of, machine.type_of, machine.m2p, machine.is_write_protected,
                  machine.get_ref):
        with pytest.raises(FrameError, match="does not exist"):
            query(mfn)


def test_write_protection_is_a_flag_per_frame():
    machine = MachineMemory(4 * MIB)
    a, b = machine.allocate(1, 2)
    machine.set_write_protected(a, True)
    assert machine.is_write_protected(a) and not machine.is_write_protected(b)
    machine.set_write_protected(a, False)
    assert not machine.is_write_protected(a)


def test_m2p_records_and_forgets_a_frames_pfn():
    machine = MachineMemory(4 * MIB)
    (mfn,) = machine.allocate(1, 1)
    assert machine.m2p(mfn) is None
    machine.set_m2p(mfn, 42)
    assert machine.m2p(mfn) == 42
    machine.set_m2p(mfn, None)
    assert machine.m2p(mfn) is None


# == a domain's RAM through its P2M ========================================================
def test_a_domain_allocated_after_two_are_freed_writes_everywhere_in_its_ram():
    """The gap: reads and writes indexed coalesced 2 MiB extents, not the P2M, so a 4 MiB domain
    whose two extents happened to be adjacent had one extent and 0x300000 raised IndexError."""
    machine = MachineMemory(8 * MIB)
    first, second = GuestMemory(machine, 2 * MIB), GuestMemory(machine, 2 * MIB)
    first.release()
    second.release()
    domain = GuestMemory(machine, 4 * MIB)
    for paddr in (0, 0x1FFFFF, 0x200000, 0x300000, 0x3FFFFC):
        domain.write(paddr, b"\xA5\x5A\xC3\x3C"[: min(4, 4 * MIB - paddr)])
        at = domain.machine_address(paddr)
        assert domain.read(paddr, 1) == bytes(machine.view[at:at + 1]) == b"\xA5"


def test_the_p2m_and_the_m2p_are_inverse():
    machine = MachineMemory(8 * MIB)
    domain = GuestMemory(machine, 6 * MIB, owner=4)
    assert all(machine.m2p(mfn) == pfn for pfn, mfn in enumerate(domain.p2m))
    assert all(machine.owner_of(mfn) == 4 for mfn in domain.p2m)


def _scattered():
    """A domain of 8 frames whose P2M is scattered: every other frame of a 16-frame machine."""
    machine = MachineMemory(16 * PAGE_SIZE, extent_frames=4)
    for owner in range(15):                          # one frame each, from the top: 15 .. 1
        machine.allocate(owner + 100, 1)
    for owner in range(0, 15, 2):
        machine.release_domain(owner + 100)          # frames 15, 13, .. 1 come back
    return machine, GuestMemory(machine, 8 * PAGE_SIZE, owner=1)


def _all_zero(view) -> bool:
    return view.tobytes() == bytes(len(view))


def test_an_access_across_pages_lands_in_each_pages_own_frame():
    machine, domain = _scattered()
    assert len(domain.runs()) == len(domain.p2m)           # nothing contiguous
    data = bytes(range(256)) * 40                           # 10 KiB: spans three frames
    domain.write(0x0F00, data)
    assert domain.read(0x0F00, len(data)) == data
    for offset in (0, 0x100, 0x1100, len(data) - 1):
        at = domain.machine_address(0x0F00 + offset)
        assert machine.view[at] == data[offset]
    domain.write_u32(0x1FFE, 0x11223344)                   # a word across two frames
    assert domain.read_u32(0x1FFE) == 0x11223344
    assert machine.view[domain.machine_address(0x1FFE)] == 0x44
    assert machine.view[domain.machine_address(0x2001)] == 0x11


def test_a_write_touches_no_frame_outside_the_domain():
    machine, domain = _scattered()
    before = bytes(machine.view)
    domain.write(0, b"\xFF" * domain.size)
    after = bytes(machine.view)
    mine = {m for m in domain.p2m}
    for mfn in range(machine.frames):
        page = after[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE]
        assert page == (b"\xFF" * PAGE_SIZE if mfn in mine else before[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE])


@pytest.mark.parametrize("paddr, length", [(4 * MIB, 1), (4 * MIB - 2, 4), (-1, 1), (-4096, 8192),
                                           (0, 4 * MIB + 1), (1 << 40, 4)])
def test_an_access_outside_ram_is_a_bus_error_and_writes_nothing(paddr, length):
    machine = MachineMemory(4 * MIB)
    domain = GuestMemory(machine, 4 * MIB)
    with pytest.raises(BusError) as info:
        domain.read(paddr, length)
    assert isinstance(info.value, IndexError) and info.value.address == paddr
    with pytest.raises(BusError):
        domain.write(paddr, b"\x01" * length)
    assert _all_zero(machine.view)
    if length == 4:
        with pytest.raises(BusError):
            domain.read_u32(paddr)
        with pytest.raises(BusError):
            domain.write_u32(paddr, 1)
    with pytest.raises(BusError):
        domain.machine_address(paddr + length - 1 if paddr >= 0 else paddr)


def test_contains_and_empty_accesses_at_the_edges():
    domain = GuestMemory(MachineMemory(4 * MIB), 4 * MIB)
    assert domain.contains(4 * MIB - 1) and not domain.contains(4 * MIB)
    assert domain.contains(4 * MIB, 0) and not domain.contains(-1, 0)
    assert domain.read(4 * MIB, 0) == b""
    domain.write(4 * MIB, b"")


class _RecordingUc:
    def __init__(self):
        self.regions = []

    def mem_map_ptr(self, address, size, perms, pointer):
        self.regions.append((address, size, perms, pointer))


def test_map_into_maps_one_region_per_run_of_contiguous_frames():
    machine = MachineMemory(64 * MIB)
    domain = GuestMemory(machine, 64 * MIB)
    uc = _RecordingUc()
    domain.map_into(uc, UC_PROT_ALL)
    assert len(uc.regions) == len(domain.runs()) <= 64 * MIB // EXTENT
    for run, (address, size, _, pointer) in zip(domain.runs(), uc.regions):
        assert address == run.pfn * PAGE_SIZE and size == run.frames * PAGE_SIZE
        assert pointer == machine.base_address + run.mfn * PAGE_SIZE


def test_runs_cover_the_p2m_in_pfn_order():
    _, domain = _scattered()
    assert domain.runs()[0] == Extent(0, domain.p2m[0], 1)
    assert sum(r.frames for r in domain.runs()) == len(domain.p2m)


def test_unicorn_and_guest_memory_see_the_same_bytes():
    machine, domain = _scattered()
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    domain.map_into(uc, UC_PROT_ALL)
    domain.write(0x0FFE, b"abcd")
    assert bytes(uc.mem_read(0x0FFE, 4)) == b"abcd"
    uc.mem_write(0x2FFF, b"xy")
    assert domain.read(0x2FFF, 2) == b"xy"


def test_release_gives_every_frame_back_and_leaves_an_empty_memory():
    machine = MachineMemory(8 * MIB)
    domain = GuestMemory(machine, 4 * MIB)
    domain.write(0x1234, b"x")
    domain.release()
    assert machine.free_frames == machine.frames and domain.p2m == [] and domain.size == 0
    with pytest.raises(BusError):
        domain.read(0, 1)
    assert _all_zero(machine.view)


def test_a_domain_too_big_for_the_machine_is_out_of_memory():
    with pytest.raises(OutOfMachineMemory):
        GuestMemory(MachineMemory(4 * MIB), 6 * MIB)


# == random lives of domains ===============================================================
MACHINE_FRAMES = 48
GRAIN = 8                       # small extents: fragmentation within a few hundred KiB


class DomainsComeAndGo(RuleBasedStateMachine):
    """Domains are created, written, referenced and destroyed at random, with a model of every
    byte each one wrote. After each step the whole machine must be exactly what the model says."""

    @initialize()
    def boot(self):
        self.machine = MachineMemory(MACHINE_FRAMES * PAGE_SIZE, extent_frames=GRAIN)
        self.live: dict[int, GuestMemory] = {}
        self.model: dict[int, bytearray] = {}            # owner -> the bytes it should hold
        self.dying: dict[int, bytes] = {}                 # mfn -> contents it must keep
        self.refs: list[int] = []                         # mfns someone holds a reference on
        self.next_owner = 1

    @rule(frames=st.integers(1, MACHINE_FRAMES + 8))
    def create(self, frames):
        owner = self.next_owner
        self.next_owner += 1
        free = self.machine.free_frames
        if frames > free:
            with pytest.raises(OutOfMachineMemory):
                GuestMemory(self.machine, frames * PAGE_SIZE, owner=owner)
            assert self.machine.free_frames == free
            return
        try:
            domain = GuestMemory(self.machine, frames * PAGE_SIZE, owner=owner)
        except OutOfMachineMemory:                        # only: one frame, and it is mfn 0
            assert frames == 1 and self.machine.owner_of(0) is None
            return
        assert not any(self.machine.view[m * PAGE_SIZE:(m + 1) * PAGE_SIZE].tobytes().strip(b"\0")
                       for m in domain.p2m), "a new domain sees an old domain's data"
        self.live[owner] = domain
        self.model[owner] = bytearray(domain.size)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), whole=st.booleans())
    def destroy(self, data, whole):
        owner = data.draw(st.sampled_from(sorted(self.live)))
        domain = self.live.pop(owner)
        del self.model[owner]
        for mfn in domain.p2m:
            if self.machine.ref_count(mfn):
                self.dying[mfn] = bytes(self.machine.view[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE])
        if whole:
            self.machine.release_domain(owner)
        else:
            domain.release()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), length=st.integers(0, 3 * PAGE_SIZE), overshoot=st.integers(0, 2 * PAGE_SIZE))
    def write(self, data, length, overshoot):
        owner = data.draw(st.sampled_from(sorted(self.live)))
        domain = self.live[owner]
        paddr = data.draw(st.integers(0, max(0, domain.size - length) + overshoot))
        pattern = bytes((owner * 7 + i) & 0xFF or 1 for i in range(length))   # owner's own bytes
        before = bytes(self.machine.view)
        if paddr + length > domain.size:
            with pytest.raises(BusError):
                domain.write(paddr, pattern)
            assert bytes(self.machine.view) == before
            return
        domain.write(paddr, pattern)
        self.model[owner][paddr:paddr + length] = pattern
        assert domain.read(paddr, length) == pattern

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def take_reference(self, data):
        owner = data.draw(st.sampled_from(sorted(self.live)))
        mfn = data.draw(st.sampled_from(self.live[owner].p2m))
        self.machine.get_ref(mfn)
        self.refs.append(mfn)

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def drop_reference(self, data):
        mfn = self.refs.pop(data.draw(st.integers(0, len(self.refs) - 1)))
        self.machine.put_ref(mfn)
        if mfn not in self.refs:
            self.dying.pop(mfn, None)

    @invariant()
    def no_frame_is_lost_or_handed_out_twice(self):
        machine = self.machine
        owners = [machine.owner_of(m) for m in range(machine.frames)]
        assert machine.free_frames == owners.count(None)
        in_use = [m for d in self.live.values() for m in d.p2m] + list(self.dying)
        assert len(in_use) == len(set(in_use)), "a frame is in two places"
        assert machine.free_frames + len(in_use) == machine.frames, "a frame was lost"
        for owner, domain in self.live.items():
            assert domain.p2m[0] != 0
            for pfn, mfn in enumerate(domain.p2m):
                assert owners[mfn] == owner and machine.m2p(mfn) == pfn
        for mfn in self.dying:
            assert machine.is_dying(mfn) and machine.m2p(mfn) is None and machine.ref_count(mfn)
        for mfn in range(machine.frames):
            pfn = machine.m2p(mfn)
            if pfn is not None:
                assert self.live[owners[mfn]].p2m[pfn] == mfn

    @invariant()
    def every_byte_is_where_the_model_says(self):
        if not hasattr(self, "machine"):
            return
        expected = bytearray(self.machine.size)
        for owner, domain in self.live.items():
            content = self.model[owner]
            for pfn, mfn in enumerate(domain.p2m):
                expected[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE] = content[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]
            assert domain.read(0, domain.size) == content
        for mfn, page in self.dying.items():
            expected[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE] = page
        assert bytes(self.machine.view) == expected


DomainsComeAndGo.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_random_domain_lives_keep_the_frame_table_exact = DomainsComeAndGo.TestCase
