"""Domains share one machine: each runs slice by slice on frames of its own, and gives them all back."""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.domain import Domain
from hypervisor.image import build_image
from hypervisor.image.multiboot import parse_kernel
from hypervisor.machine.memory import PAGE_SIZE, MachineMemory

GUESTS = Path(__file__).resolve().parent.parent / "guests"
RAM = 4 << 20


def expected(name: str) -> str:
    return (GUESTS / "expected" / f"{name}.txt").read_text()


def domain(machine: MachineMemory, domid: int, guest: str, technique: str) -> Domain:
    d = Domain(machine, domid, RAM, technique)
    d.load(parse_kernel(build_image(GUESTS / f"{guest}.S"), RAM))
    return d


def machine_bytes(machine: MachineMemory, mfns: list[int]) -> bytes:
    return b"".join(bytes(machine.view[m * PAGE_SIZE:(m + 1) * PAGE_SIZE]) for m in mfns)


@pytest.fixture
def machine():
    return MachineMemory(2 * RAM)


def test_two_domains_run_interleaved_slice_by_slice_and_each_prints_its_own_console(machine):
    # timer.S sleeps in hlt between ticks and stishadow.S waits on its UART: both take many slices.
    a = domain(machine, 1, "timer", "trap")
    b = domain(machine, 2, "stishadow", "native")
    order = []
    while not (a.finished and b.finished):
        for d in (a, b):
            if not d.finished:
                d.run_slice()
                order.append(d.domid)
    assert order.count(1) > 1 and order.count(2) > 1
    assert order[:4] == [1, 2, 1, 2]                    # neither ran to its end before the other started
    for d, guest in ((a, "timer"), (b, "stishadow")):
        result = d.monitor.result()
        assert result.exit_code == 0, result.halted_reason
        assert result.console.decode() == expected(guest)


def test_domains_on_one_machine_get_disjoint_frames_that_the_frame_table_says_they_own(machine):
    a = domain(machine, 1, "hello", "native")
    b = domain(machine, 2, "hello", "trap")
    frames_a, frames_b = set(a.pc.memory.p2m), set(b.pc.memory.p2m)
    assert len(frames_a) == len(frames_b) == RAM // PAGE_SIZE
    assert frames_a.isdisjoint(frames_b)
    assert all(machine.owner_of(m) == 1 for m in frames_a)
    assert all(machine.owner_of(m) == 2 for m in frames_b)
    assert machine.free_frames == machine.frames - len(frames_a) - len(frames_b)


def test_a_running_domain_writes_none_of_the_other_domains_frames(machine):
    a = domain(machine, 1, "timer", "trap")
    b = domain(machine, 2, "hello", "native")
    before = machine_bytes(machine, b.pc.memory.p2m)
    result = a.run()
    assert result.exit_code == 0
    assert machine_bytes(machine, b.pc.memory.p2m) == before


def test_destroy_returns_every_frame_to_the_machine(machine):
    a = domain(machine, 1, "timer", "trap")
    b = domain(machine, 2, "stishadow", "native")
    a.run_slice()
    b.run_slice()                                        # destroyed mid-run, whatever state they are in
    a.destroy()
    assert machine.free_frames == machine.frames - RAM // PAGE_SIZE
    assert machine.frames_of(1) == []
    b.destroy()
    assert machine.free_frames == machine.frames
    assert machine.frames_of(2) == []


def test_a_domain_built_from_frames_another_domain_used_starts_with_zeroed_ram_and_runs():
    machine = MachineMemory(RAM)                         # room for one: the second must reuse the frames
    a = domain(machine, 1, "timer", "native")
    assert a.run().exit_code == 0
    a.destroy()
    b = Domain(machine, 2, RAM, "trap")
    assert b.pc.memory.read(0, RAM) == bytes(RAM)
    b.load(parse_kernel(build_image(GUESTS / "hello.S"), RAM))
    result = b.run()
    assert result.console.decode() == expected("hello")
    b.destroy()
    assert machine.free_frames == machine.frames


def test_run_slice_after_the_end_changes_nothing(machine):
    a = domain(machine, 1, "hello", "native")
    result = a.run()
    a.run_slice()
    assert a.monitor.result().instructions == result.instructions
    assert a.monitor.result().console == result.console
