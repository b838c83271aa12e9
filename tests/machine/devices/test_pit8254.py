"""The 8254 on virtual time: counters computed from nanoseconds, the latch, modes 0,
2 and 3 on IRQ0, next_event_ns for the run loop, and port 0x61's view of channel 2."""
from hypothesis import given, strategies as st

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.pit import (
    PIT_HZ, Pit8254, Port61, counter_value, ns_for_ticks, ticks_elapsed)


class Irq0:
    def __init__(self):
        self.levels = []
        self.rising = 0

    def __call__(self, level):
        if level and (not self.levels or not self.levels[-1]):
            self.rising += 1
        self.levels.append(level)


def make():
    clock, irq = VirtualClock(), Irq0()
    return clock, Pit8254(clock, irq), irq


def program(pit, channel, mode, count, access=3):
    pit.write(0x43, 1, (channel << 6) | (access << 4) | (mode << 1))
    if access in (1, 3):
        pit.write(0x40 + channel, 1, count & 0xFF)
    if access in (2, 3):
        pit.write(0x40 + channel, 1, (count >> 8) & 0xFF)


def read_counter(pit, channel):
    lo = pit.read(0x40 + channel, 1)
    return lo | (pit.read(0x40 + channel, 1) << 8)


def test_tick_conversion_is_exact_integer_math():
    assert ticks_elapsed(0, 10**9) == PIT_HZ
    assert ns_for_ticks(PIT_HZ) == 10**9
    assert ticks_elapsed(0, ns_for_ticks(11932)) == 11932
    assert ticks_elapsed(0, ns_for_ticks(11932) - 1) == 11931


def test_channel0_runs_at_power_on_like_qemu():
    clock, pit, irq = make()
    assert pit.channels[0].mode == 3 and pit.channels[0].count == 0x10000
    assert pit.next_event_ns() == ns_for_ticks(0x10000)     # 18.2 Hz


def test_mode2_raises_irq0_once_per_period_in_virtual_ns():
    clock, pit, irq = make()
    program(pit, 0, 2, 11932)             # ~100 Hz, Linux's LATCH
    period = ns_for_ticks(11932)
    assert pit.next_event_ns() == period
    before = irq.rising
    for k in range(1, 4):
        clock.advance_to(pit.next_event_ns())
        pit.update()
        assert irq.rising == before + k
        assert pit.next_event_ns() == ns_for_ticks((k + 1) * 11932)
    assert abs(pit.next_event_ns() - 4 * 10**7) < 1000     # 4 periods of 10 ms


def test_mode3_square_wave_edges_at_each_period_and_low_for_second_half():
    clock, pit, irq = make()
    program(pit, 0, 3, 1000)
    assert irq.levels[-1] is True         # OUT high on load
    clock.advance_to(ns_for_ticks(500))
    pit.update()
    assert irq.levels[-1] is False
    assert pit.next_event_ns() == ns_for_ticks(1000)
    rising = irq.rising
    clock.advance_to(ns_for_ticks(1000))
    pit.update()
    assert irq.rising == rising + 1


def test_missed_periods_coalesce_into_one_edge():
    clock, pit, irq = make()
    program(pit, 0, 2, 100)
    rising = irq.rising
    clock.advance_to(ns_for_ticks(1050))
    pit.update()
    assert irq.rising == rising + 1
    assert pit.next_event_ns() == ns_for_ticks(1100)


def test_update_before_the_event_changes_nothing():
    clock, pit, irq = make()
    program(pit, 0, 2, 100)
    rising = irq.rising
    clock.advance_to(pit.next_event_ns() - 1)
    pit.update()
    assert irq.rising == rising


def test_mode0_one_shot_fires_once_then_has_no_next_event():
    clock, pit, irq = make()
    program(pit, 0, 0, 500)
    assert irq.levels[-1] is False
    clock.advance_to(pit.next_event_ns())
    pit.update()
    assert irq.levels[-1] is True
    assert pit.next_event_ns() is None
    clock.advance(10**9)
    pit.update()
    assert irq.levels[-1] is True and pit.next_event_ns() is None


def test_counter_reads_lo_then_hi_computed_from_virtual_time():
    clock, pit, _ = make()
    program(pit, 0, 2, 10000)
    clock.advance_to(ns_for_ticks(1234))
    assert read_counter(pit, 0) == 10000 - 1234


def test_latch_freezes_the_count_until_both_bytes_are_read():
    clock, pit, _ = make()
    program(pit, 0, 2, 10000)
    clock.advance_to(ns_for_ticks(100))
    pit.write(0x43, 1, 0x00)              # latch channel 0
    clock.advance_to(ns_for_ticks(5000))
    pit.write(0x43, 1, 0x00)              # a second latch is ignored
    assert read_counter(pit, 0) == 9900
    assert read_counter(pit, 0) == 5000   # live again


def test_lobyte_only_access_mode():
    clock, pit, _ = make()
    program(pit, 1, 2, 0x80, access=1)
    clock.advance_to(ns_for_ticks(0x10))
    assert pit.read(0x41, 1) == 0x70
    assert pit.read(0x41, 1) == 0x70


def test_read_back_status_reports_out_mode_and_access():
    clock, pit, _ = make()
    program(pit, 2, 0, 100)
    pit.write(0x43, 1, 0xC0 | 0x20 | 0x08)   # read-back: status only, channel 2
    assert pit.read(0x42, 1) == (0 << 7) | (3 << 4) | (0 << 1)
    clock.advance_to(ns_for_ticks(100))
    pit.write(0x43, 1, 0xE8)
    assert pit.read(0x42, 1) == 0x80 | 0x30


def test_control_port_reads_zero():
    assert make()[1].read(0x43, 1) == 0


def test_port61_gates_channel2_and_shows_its_output():
    # Linux's pit_calibrate_tsc: gate on, speaker off, mode 0, poll bit 5.
    clock, pit, _ = make()
    port61 = Port61(pit)
    assert port61.read(0x61, 1) & 0x01 == 0          # channel 2 gate low at reset
    port61.write(0x61, 1, 0x01)
    program(pit, 2, 0, 1000)
    assert not port61.read(0x61, 1) & 0x20
    clock.advance_to(ns_for_ticks(1000))
    assert port61.read(0x61, 1) & 0x21 == 0x21


def test_port61_refresh_bit_toggles_on_every_read():
    _, pit, _ = make()
    port61 = Port61(pit)
    assert port61.read(0x61, 1) & 0x10 != port61.read(0x61, 1) & 0x10


def test_gate_rising_edge_restarts_mode2_count():
    clock, pit, _ = make()
    program(pit, 2, 2, 1000)
    clock.advance_to(ns_for_ticks(300))
    pit.set_gate(2, True)
    clock.advance_to(ns_for_ticks(400))
    assert read_counter(pit, 2) == 1000 - (ticks_elapsed(ns_for_ticks(300), ns_for_ticks(400)))


counts = st.integers(2, 0x10000)


@given(mode=st.sampled_from([2, 3]), count=counts, t1=st.integers(0, 10**8),
       dt=st.integers(0, 10**6))
def test_periodic_counter_is_in_range_and_monotone_within_a_half_or_full_period(
        mode, count, t1, dt):
    d1 = ticks_elapsed(0, t1)
    d2 = ticks_elapsed(0, t1 + dt)
    c1, c2 = counter_value(mode, count, d1), counter_value(mode, count, d2)
    assert 1 <= c1 <= count and 1 <= c2 <= count
    # mode 2 reloads once per period, mode 3 twice (it counts down by two)
    span = count if mode == 2 else max(1, count // 2)
    if count % 2 == 0 or mode == 2:
        if d1 // span == d2 // span:
            assert c2 <= c1


@given(mode=st.sampled_from([0, 2, 3]), count=st.integers(1, 0xFFFF),
       t=st.integers(0, 10**10))
def test_counter_read_through_ports_is_always_a_16_bit_value(mode, count, t):
    clock, pit, _ = make()
    program(pit, 0, mode, count)
    clock.advance_to(t)
    value = read_counter(pit, 0)
    assert 0 <= value <= 0xFFFF
    assert value == counter_value(mode, count, ticks_elapsed(0, t)) & 0xFFFF


@given(count=st.integers(2, 5000), steps=st.lists(st.integers(1, 20000), max_size=30))
def test_next_event_is_always_in_the_future_and_on_a_period_boundary(count, steps):
    clock, pit, _ = make()
    program(pit, 0, 2, count)
    for step in steps:
        clock.advance(step)
        pit.update()
        nxt = pit.next_event_ns()
        assert nxt > clock.now
        assert ticks_elapsed(0, nxt) % count == 0
        assert ticks_elapsed(0, nxt - 1) % count == count - 1
