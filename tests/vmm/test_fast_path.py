"""The exit fast paths change the time an exit takes and nothing else.

A technique may take its commonest events in one pass (``Monitor.fast_event``): native and
trap deliver a fault or an ``int n`` through ``deliver_flat``, and trap emulates a #GP or #NP
straight from the hook. The general path (the dispatcher, ``handle_exception``, ``deliver``)
stays as the fallback. Here every guest runs twice, as shipped and with ``fast_event``
switched off, and the two runs must agree on everything a run produces: console, exit code,
halted reason, instructions, exits by reason, virtual time and the final registers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run import load_micro
from hypervisor.machine.cpu import EAX, EBP, EBX, ECX, EDI, EDX, EFLAGS, EIP, ESI, ESP, CS, DS, ES, FS, GS, SS
from hypervisor.session import build_domain, load_image_bytes

ROOT = Path(__file__).resolve().parents[2]
GUESTS = sorted(p for p in (ROOT / "guests").glob("*.S") if p.name != "runtime.S")
MICRO = ["nano_syscall", "nano_divzero", "nano_cr0", "trap_cli", "io_in"]
REGISTERS = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, EIP, EFLAGS, CS, SS, DS, ES, FS, GS)


def run(image: bytes, technique: str, fast: bool) -> dict:
    domain = build_domain(image, technique, max_instructions=20_000_000)
    monitor = domain.monitor
    if not fast:
        monitor.fast_event = lambda intno, eip: False
    try:
        result = domain.run()
        registers = monitor.cpu.read_batch(REGISTERS)
    finally:
        domain.destroy()
    return {"console": result.console, "exit_code": result.exit_code, "halted": result.halted_reason,
            "instructions": result.instructions, "exits": result.exits, "virtual_ns": result.virtual_ns,
            "registers": registers}


def images() -> list:
    cases = [pytest.param(path.name, id=path.stem) for path in GUESTS]
    cases += [pytest.param(name, id=name) for name in MICRO]
    return cases


@pytest.mark.parametrize("technique", ["native", "trap"])
@pytest.mark.parametrize("name", images())
def test_a_guest_runs_the_same_with_and_without_the_fast_path(name, technique):
    if name.endswith(".S"):
        path = ROOT / "guests" / name
        if technique == "trap" and "# hvsim: task-switch" in path.read_text():
            pytest.skip("hardware task switches: trap refuses them")
        image = load_image_bytes(path)
    else:
        image = load_micro(ROOT / "benchmarks" / "micro" / f"{name}.S", 300)
    assert run(image, technique, fast=True) == run(image, technique, fast=False)


@pytest.mark.parametrize("technique", ["native", "trap"])
def test_the_fast_path_takes_the_events_of_the_system_call_loop(technique):
    """Otherwise the comparison above would compare the general path with itself."""
    image = load_micro(ROOT / "benchmarks" / "micro" / "nano_syscall.S", 300)
    domain = build_domain(image, technique)
    taken = []
    fast_event = domain.monitor.fast_event
    domain.monitor.fast_event = lambda intno, eip: taken.append(fast_event(intno, eip)) or taken[-1]
    try:
        domain.run()
    finally:
        domain.destroy()
    assert taken.count(True) >= 300
