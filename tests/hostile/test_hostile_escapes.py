"""No guest reaches real ring 0 or the monitor's memory under trap.

trap runs the guest kernel at real ring 1 and keeps its own code and data - shadow GDTs, IDT,
TSS, a one-byte iretd stub that every guest entry runs at real CPL 0, and its stack - at
0xFFC00000-0xFFC24000, in the same linear space as the guest. Issue 5 found the ways out that
these guests try (each guest's header tells its story):

* stub_overwrite - ring 3 copies code over the iretd stub; its next `int 0x80` runs it at CPL 0;
* monitor_read, shadow_write - the guest reads the shadow GDT, or writes a call gate into it
  and a stack into the monitor's TSS;
* tss_dpl1_monitor, tss_dpl1_kernel - a DPL-1 TSS survives lgdt into the shadow GDT, and a far
  jump to it is a hardware task switch, into the monitor's ring-0 selectors or the guest's own;
* gate_monitor_ring1, gate_monitor_ring3 - call gates to the monitor's code selector 0xFFE8;
* gate_kernel - an ordinary DPL-3 call gate into the guest kernel (Unicorn aborted the process).

What counts as an escape is made visible by the guests themselves: a payload that runs prints
PWNED and exits 0x66, and guest code that should be in ring 0 prints its real CS RPL, which under
trap must never be 0 (``mov r, cs`` does not trap, so it shows the real ring). A payload also
spins 4,000,000 instructions first, so that it shows in the run's instruction count even if the
console is refused to it and its fault cannot be delivered (hostile.S). Every run is a child
process: an abort or a hang fails the test instead of the suite.

The bare machine is the referee for the rest. Under trap an attack must end as on QEMU (the guest
kernel seeing RPL 1), or go as on QEMU until hvsim stops the run as a guest crash or the guest
receives a fault QEMU did not give (see ``assert_contained``): never with a value or a call that
shows the monitor through. Under native it must end as on QEMU, except that hvsim maps nothing
outside RAM where QEMU has unassigned space (reads 0, writes dropped): there native may stop with
a guest crash at the access.
"""
import re

import pytest

from tests.hostile.harness import (TECHNIQUES, assert_clean_end, assert_contained, assert_no_escape,
                                   assert_same_as_bare, assert_same_as_bare_or_stops_at, outcome,
                                   prefetch)

# guest -> the console line after which it attacks.
ATTACK_LINE = {
    "stub_overwrite": "user: copying a payload over 0xffc22000",
    "monitor_read": "kernel: reading 0xffc00000-0xffc24000",
    "shadow_write": "user: writing a gate at 0xffc10050 and a stack into 0xffc21000",
    "tss_dpl1_monitor": "kernel: jmp far to the DPL-1 TSS",
    "tss_dpl1_kernel": "kernel: jmp far to the DPL-1 TSS",
    "gate_monitor_ring1": "kernel: lcall through a DPL-1 gate to 0xffe8",
    "gate_monitor_ring3": "user: lcall through a DPL-3 gate to 0xffe8",
    "gate_kernel": "user: lcall through a DPL-3 gate to the kernel",
}
# How native must compare with QEMU: exactly, or (touching unassigned space) exactly or stopped.
NATIVE_EXACT = ("tss_dpl1_kernel", "gate_monitor_ring1", "gate_monitor_ring3", "gate_kernel")
NATIVE_UNASSIGNED = ("stub_overwrite", "monitor_read", "shadow_write")
# tss_dpl1_monitor is not compared under native: on QEMU the task switch loads all six selectors
# with empty caches before it checks them, so the #TS for CS 0xFFE8 (beyond the GDT limit) runs the
# guest's handler on a half-loaded 16-bit SS; hvsim delivers through the real tables and ends the
# run with a triple fault. That end is only required to be clean.


@pytest.fixture(scope="module", autouse=True)
def _start_runs():
    prefetch(ATTACK_LINE)


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("guest", ATTACK_LINE)
def test_attack_ends_cleanly_without_reaching_real_ring0(guest, technique):
    run = outcome(guest, technique)
    # trap and hvm make task switches with the machine's own switch (machine/taskswitch.py),
    # which declines a new task whose CS cannot be loaded (QEMU goes on with half-loaded caches).
    assert_clean_end(run, refusal="half-loaded segments" if technique != "native" else None)
    assert_no_escape(run)


def test_trap_shows_the_guest_none_of_the_monitors_memory():
    run = outcome("monitor_read", "trap")
    assert_clean_end(run)
    counts = re.findall(r"nonzero dwords (0x[0-9a-f]+)", run.text)
    assert all(int(c, 16) == 0 for c in counts), f"the monitor's memory is readable\n{run.describe()}"
    # Either nothing was there to read, or the first read of it ended the run: as a read
    # outside RAM under native (the monitor's tables are above 4 GiB, out of any guest
    # address), or by the read hook (where the tables must lie below 4 GiB).
    ended = ("read the monitor's memory" in run.halted_reason or "READ_UNMAPPED" in run.halted_reason)
    assert counts or ended, run.describe()


@pytest.mark.qemu
@pytest.mark.parametrize("guest", ATTACK_LINE)
def test_trap_contains_the_attack_as_the_bare_machine_would(guest):
    run = outcome(guest, "trap")
    if not run.has_result and "half-loaded segments" in run.stderr:
        # The task switch into the monitor's selectors is declined up front (machine/taskswitch.py).
        assert_clean_end(run, refusal="half-loaded segments")
        return
    assert_contained(run, outcome(guest, "qemu"), ATTACK_LINE[guest])


@pytest.mark.qemu
@pytest.mark.parametrize("guest", NATIVE_EXACT + NATIVE_UNASSIGNED)
def test_native_ends_the_attack_as_the_bare_machine_does(guest):
    run, bare = outcome(guest, "native"), outcome(guest, "qemu")
    if guest in NATIVE_EXACT:
        assert_same_as_bare(run, bare)
    else:
        assert_same_as_bare_or_stops_at(run, bare, ATTACK_LINE[guest])
