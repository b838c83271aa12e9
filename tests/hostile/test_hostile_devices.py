"""Hostile guests against the PC's newer devices: they must get QEMU's answers, and end cleanly.

A device model written from a datasheet answers the accesses a driver makes. A hostile or merely
sloppy kernel makes others: garbage in every register, indexes past the end, byte and word
accesses to dword registers, accesses that straddle two registers, instruction forms no driver
uses. QEMU answers each of them in its own way (its memory core refuses some accesses, splits
others, and each device decodes only some address bits), and hvsim must answer the same, without
a traceback, an abort or a hang. Each guest prints what it reads back, so a model that differs
shows as a console line that differs:

* mmio_apic_garbage - the local APIC: narrow, misaligned and 8-byte accesses, ESR, the register
  file written with 0xffffffff, 0 and 0xa5a5a5a5 (ICR, EOI, the timer's count and offset 0 left
  out), an MSI through offset 0, and the alias at 0xfee01020;
* mmio_apic_forms - TPR and LVT thermal through every instruction form that touches memory;
* mmio_ioapic_garbage - the I/O APIC: indexes that name nothing, garbage in ID, version and
  every redirection entry, EOI, narrow, misaligned, reserved and aliased accesses;
* mmio_fwcfg_garbage - fw_cfg: unknown keys, reads past an item's end, the file directory's
  shape, writes to the wrong ports at the wrong widths, DMA descriptors at 0, over themselves,
  above 4 GiB, on the BIOS ROM and targeting 0xffc00000 (trap's monitor area);
* mmio_testdev - pc-testdev's latch ports and 64 KiB window at every width and alignment.

Two guests end with one access QEMU answers and hvsim may have nothing mapped for: the APIC
alias at 0xfee01020 (QEMU decodes 1 MiB from 0xfee00000 by bits 4-11) and a dword half past the
end of the testdev window. As in test_hostile_crashes, hvsim may stop there with a guest crash,
the console QEMU's up to that line.

pc-testdev is not on a default QEMU PC, and the harness's QEMU runner (tests/qemu.py) passes no
extra devices, so mmio_testdev's reference run is made here, with `-device pc-testdev` added to
the same command line.
"""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

import pytest

from tests.hostile.harness import (TECHNIQUES, Outcome, assert_clean_end, assert_same_as_bare,
                                   assert_same_as_bare_or_stops_at, image, outcome, prefetch)
from tests.qemu import QEMU, qemu_command

# Console and exit code exactly as on QEMU.
EXACT = ("mmio_apic_forms", "mmio_ioapic_garbage", "mmio_fwcfg_garbage")
# As on QEMU, or a guest crash at or after this console line (an access hvsim may not map).
MAY_STOP = {
    "mmio_apic_garbage": "kernel: id = 0x34000000; dword read 0x1020",
    "mmio_testdev": "kernel: dword accesses at 0xff00fffe, across the window's end",
}
CASES = EXACT + tuple(MAY_STOP)
NEEDS_TESTDEV = ("mmio_testdev",)


@lru_cache(maxsize=None)
def bare_with_testdev(name: str, timeout: float = 10.0) -> Outcome:
    """The guest on qemu-system-i386 with pc-testdev added (tests/qemu.py's command otherwise)."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")
    command = qemu_command(image(name)) + ["-device", "pc-testdev"]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome("qemu", exc.stdout or b"", None)
    status = done.returncode
    return Outcome("qemu", done.stdout, status >> 1 if status > 0 and status & 1 else None)


def bare(name: str) -> Outcome:
    return bare_with_testdev(name) if name in NEEDS_TESTDEV else outcome(name, "qemu")


@pytest.fixture(scope="module", autouse=True)
def _start_runs():
    prefetch([name for name in CASES if name not in NEEDS_TESTDEV])
    prefetch(NEEDS_TESTDEV, machines=TECHNIQUES)


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("guest", CASES)
def test_device_abuse_ends_the_run_as_a_result_not_a_vmm_crash(guest, technique):
    assert_clean_end(outcome(guest, technique))


@pytest.mark.qemu
@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("guest", CASES)
def test_device_abuse_gets_the_bare_machines_answers(guest, technique):
    run, reference = outcome(guest, technique), bare(guest)
    if guest in EXACT:
        assert_same_as_bare(run, reference)
    else:
        assert_same_as_bare_or_stops_at(run, reference, MAY_STOP[guest])
