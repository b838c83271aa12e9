"""The virtual clock only moves when told to, and never backwards."""
import pytest

from hypervisor.machine.clock import VirtualClock


def test_clock_starts_at_zero_and_advances_by_exact_nanoseconds():
    clock = VirtualClock()
    assert clock.now == 0
    clock.advance(838)
    clock.advance(1)
    assert clock.now == 839


def test_advance_to_moves_to_an_absolute_time():
    clock = VirtualClock()
    clock.advance_to(10**9)
    assert clock.now == 10**9
    clock.advance_to(10**9)          # standing still is allowed
    assert clock.now == 10**9


def test_clock_refuses_to_run_backwards():
    clock = VirtualClock(now=100)
    with pytest.raises(ValueError):
        clock.advance_to(99)
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock.now == 100
