"""The clock's timer queue, live time inside a slice, and the PIT keeping its deadline armed there."""
from __future__ import annotations

import pytest

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.pit import Pit8254, ns_for_ticks

MS = 1_000_000
COUNT_1KHZ = 0x4A9                  # 1193 ticks: ~1 ms


class Listener:
    def __init__(self, clock: VirtualClock):
        self.deadlines: list[int] = []
        clock.on_rearm = self.deadlines.append


# == the queue =====================================================================================
def test_an_empty_queue_has_no_next_deadline():
    assert VirtualClock().next_deadline() is None


def test_next_deadline_is_the_earliest_armed_timer():
    clock = VirtualClock()
    clock.arm("a", 500)
    clock.arm("b", 200)
    clock.arm("c", 900)
    assert clock.next_deadline() == 200
    assert (clock.deadline("a"), clock.deadline("b"), clock.deadline("c")) == (500, 200, 900)


def test_rearming_an_owner_replaces_its_deadline_even_with_a_later_one():
    clock = VirtualClock()
    clock.arm("pit", 100)
    clock.arm("other", 300)
    clock.arm("pit", 1000)
    assert clock.deadline("pit") == 1000
    assert clock.next_deadline() == 300


def test_disarming_removes_the_timer_and_disarming_twice_is_harmless():
    clock = VirtualClock()
    clock.arm("pit", 100)
    clock.arm("other", 300)
    clock.arm("pit", None)
    clock.arm("pit", None)
    assert clock.deadline("pit") is None
    assert clock.next_deadline() == 300
    clock.arm("other", None)
    assert clock.next_deadline() is None


def test_every_arming_tells_the_listener_its_deadline():
    clock = VirtualClock()
    heard = Listener(clock)
    clock.arm("a", 500)
    clock.arm("b", 900)            # later than the earliest: still reported
    clock.arm("a", 100)
    assert heard.deadlines == [500, 900, 100]


def test_disarming_tells_the_listener_nothing():
    clock = VirtualClock()
    clock.arm("a", 500)
    heard = Listener(clock)
    clock.arm("a", None)
    assert heard.deadlines == []


def test_a_clock_without_a_listener_arms_quietly():
    clock = VirtualClock()
    clock.arm("a", 5)
    assert clock.next_deadline() == 5


def test_a_deadline_may_lie_in_the_past_and_is_still_the_next_one():
    clock = VirtualClock(now=1000)
    clock.arm("late", 10)
    assert clock.next_deadline() == 10


# == live time ======================================================================================
def test_during_a_slice_now_includes_the_instructions_run_so_far():
    clock = VirtualClock(now=1000)
    ran = [0]
    clock.run_slice(lambda: ran[0])
    assert clock.now == 1000
    ran[0] = 250
    assert clock.now == 1250
    ran[0] = 400
    assert clock.now == 1400


def test_after_the_slice_now_is_the_base_until_the_slice_is_accounted():
    clock = VirtualClock(now=1000)
    clock.run_slice(lambda: 400)
    clock.run_slice(None)
    assert clock.now == 1000
    clock.advance(400)
    assert clock.now == 1400


# == the PIT in the queue ===========================================================================
def pit_at(now: int = 0) -> tuple[VirtualClock, Pit8254, list[bool]]:
    clock = VirtualClock(now=now)
    edges: list[bool] = []
    return clock, Pit8254(clock, irq=edges.append), edges


def load_channel0(pit: Pit8254, mode: int, count: int) -> None:
    pit.write(0x43, 1, 0x30 | (mode << 1))          # channel 0, lobyte/hibyte
    pit.write(0x40, 1, count & 0xFF)
    pit.write(0x40, 1, count >> 8)


def test_the_pit_arms_its_first_edge_at_power_on():
    clock, pit, _ = pit_at()
    assert clock.deadline(pit) == ns_for_ticks(0x10000)
    assert clock.next_deadline() == pit.next_event_ns()


def test_a_new_count_is_armed_from_the_moment_it_is_loaded_not_from_the_old_deadline():
    clock, pit, _ = pit_at()
    load_channel0(pit, 2, 0)                        # the BIOS rate: 18.2 Hz, first edge at ~54.9 ms
    bios_deadline = clock.deadline(pit)
    clock.advance(30 * MS)
    heard = Listener(clock)
    load_channel0(pit, 2, COUNT_1KHZ)
    expected = 30 * MS + ns_for_ticks(COUNT_1KHZ)
    assert clock.deadline(pit) == expected < bios_deadline
    assert heard.deadlines[-1] == expected
    assert clock.next_deadline() == expected


def test_a_count_loaded_mid_slice_is_armed_from_the_live_time():
    clock, pit, _ = pit_at(now=10 * MS)
    ran = [0]
    clock.run_slice(lambda: ran[0])
    ran[0] = 123_456
    load_channel0(pit, 2, COUNT_1KHZ)
    assert clock.deadline(pit) == 10 * MS + 123_456 + ns_for_ticks(COUNT_1KHZ)


def test_update_at_the_deadline_raises_irq0_and_arms_the_next_period():
    clock, pit, edges = pit_at()
    load_channel0(pit, 2, COUNT_1KHZ)
    first = clock.deadline(pit)
    clock.advance_to(first)
    edges.clear()
    pit.update()
    assert True in edges
    assert clock.deadline(pit) == ns_for_ticks(2 * COUNT_1KHZ)
    assert clock.deadline(pit) > clock.now


def test_a_fired_one_shot_disarms_its_timer():
    clock, pit, _ = pit_at()
    load_channel0(pit, 0, 100)                       # mode 0: one edge after 100 ticks
    clock.advance_to(clock.deadline(pit))
    pit.update()
    assert clock.deadline(pit) is None
    assert clock.next_deadline() is None


def test_update_before_the_deadline_keeps_it():
    clock, pit, edges = pit_at()
    load_channel0(pit, 2, COUNT_1KHZ)
    deadline = clock.deadline(pit)
    clock.advance(deadline // 2)
    pit.update()
    assert clock.deadline(pit) == deadline


def latched_count(pit: Pit8254) -> int:
    pit.write(0x43, 1, 0x00)                         # latch channel 0
    return pit.read(0x40, 1) | pit.read(0x40, 1) << 8


def test_a_counter_latched_twice_in_one_slice_moves_with_the_instructions_between():
    """Linux's delay-loop calibration polls the latched count until it changes."""
    clock, pit, _ = pit_at()
    load_channel0(pit, 2, COUNT_1KHZ)
    ran = [0]
    clock.run_slice(lambda: ran[0])
    ran[0] = 10_000
    first = latched_count(pit)
    ran[0] = 20_000
    second = latched_count(pit)
    assert first != second
    assert first - second == (20_000 * 1_193_182 // 10**9) - (10_000 * 1_193_182 // 10**9)


@pytest.mark.parametrize("at_ns", [0, 1, 999, 419_000, 838_095])
def test_a_latched_count_is_the_count_at_the_live_time(at_ns):
    clock, pit, _ = pit_at()
    load_channel0(pit, 2, COUNT_1KHZ)
    clock.run_slice(lambda: at_ns)
    ticks = at_ns * 1_193_182 // 10**9
    assert latched_count(pit) == COUNT_1KHZ - ticks % COUNT_1KHZ
