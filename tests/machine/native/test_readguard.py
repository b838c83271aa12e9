"""The read guard lets the CPU's own reads of the monitor's memory through without Python.

Under trap every segment load reads the shadow GDT. With the C TLB fill the monitor's tables lie
above 4 GiB, where no guest address reaches, and need no guard; without it (here forced with
HVSIM_TLB=cpu) they lie below 4 GiB under a read hook. The guard (readguard.c, or its Python fallback) passes the monitor's own loads, the
iretd stub, and the descriptor reads of the guest's own iret/retf; every other read reaches the
monitor's hook, which ends the run when a guest instruction reads the monitor's memory.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run import load_micro
from hypervisor.machine.native.readguard import native_filter
from hypervisor.session import build_domain, load_image_bytes

ROOT = Path(__file__).resolve().parents[3]
SYSCALLS = 500


def run_trap(image: bytes, monkeypatch, python_filter: bool = False):
    monkeypatch.setenv("HVSIM_TLB", "cpu")
    if python_filter:
        monkeypatch.setenv("HVSIM_READGUARD", "python")
    domain = build_domain(image, "trap")
    monitor = domain.monitor
    assert monitor.read_guard.native is not python_filter or native_filter() is None
    try:
        return domain.run(), monitor
    finally:
        domain.destroy()


needs_c = pytest.mark.skipif(native_filter() is None, reason="readguard.c was not built")


@needs_c
def test_system_calls_from_ring_3_call_no_python_for_the_cpus_own_reads(monkeypatch):
    result, monitor = run_trap(load_micro(ROOT / "benchmarks" / "micro" / "nano_syscall.S", SYSCALLS), monkeypatch)
    assert result.exit_code == 0, result.halted_reason
    assert monitor.read_guard.native
    # Each system call's return faults on the hidden user code descriptor, which the guard
    # recognises as the iret's own read; what remains are the guest's own segment loads at boot.
    assert monitor.read_guard.python_calls < 40


@pytest.mark.parametrize("guest", ["usermode.S", "sysenter.S", "exceptions.S"])
def test_the_python_filter_gives_the_same_runs_as_the_c_one(guest, monkeypatch):
    image = load_image_bytes(ROOT / "guests" / guest)
    with_c, _ = run_trap(image, monkeypatch)
    in_python, _ = run_trap(image, monkeypatch, True)
    assert (with_c.console, with_c.exit_code, with_c.instructions, with_c.exits) == \
        (in_python.console, in_python.exit_code, in_python.instructions, in_python.exits)


def test_with_the_c_tlb_fill_the_monitors_tables_are_above_4_gib_and_unguarded(monkeypatch):
    from hypervisor.machine.cpu import GDTR, IDTR, TR
    monkeypatch.delenv("HVSIM_TLB", raising=False)
    from hypervisor.machine.native.tlbfill import native_fill
    if native_fill() is None:
        pytest.skip("tlbfill.c was not built")
    domain = build_domain(load_image_bytes(ROOT / "guests" / "hello.S"), "trap")
    try:
        result = domain.run()
        cpu = domain.monitor.cpu
        assert result.exit_code == 0
        assert domain.monitor.read_guard is None
        assert all(cpu.table_register(reg)[0] >= 1 << 32 for reg in (GDTR, IDTR))
        assert cpu.segment_register(TR)[1] >= 1 << 32
    finally:
        domain.destroy()
