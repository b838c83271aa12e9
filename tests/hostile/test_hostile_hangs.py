"""A halted guest that nothing can wake ends the run at once; it never hangs hvsim.

masked_hlt.S masks every PIC line and runs `sti; hlt`: no interrupt can ever arrive. hvsim's idle
loop used to jump virtual time from one PIT deadline to the next forever, counting no
instructions, so neither the guest nor --max-instructions ever ended the run (the bare machine
sits in hlt forever too, so QEMU is no referee here). masked_cascade_hlt.S leaves only IRQ2, the
cascade, unmasked on the master while the slave masks all its lines: the master's mask is not
0xFF, yet nothing can wake the CPU either.

Each run is a child process with a 20 s timeout and a budget of 1,000,000 instructions: it must
end well inside both, with a halted_reason saying nothing can wake the guest (the wording hvsim
has used for `cli; hlt` since the first issue).
"""
import pytest

from tests.hostile.harness import TECHNIQUES, assert_clean_end, outcome, prefetch

BUDGET = 1_000_000
CONSOLE = {
    "masked_hlt": "masked_hlt\nkernel: all IRQs masked; sti; hlt\n",
    "masked_cascade_hlt": "masked_cascade_hlt\n"
                          "kernel: only IRQ2 (the cascade) unmasked, slave all masked; sti; hlt\n",
}


@pytest.fixture(scope="module", autouse=True)
def _start_runs():
    prefetch(CONSOLE, machines=TECHNIQUES, max_instructions=BUDGET)


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("guest", CONSOLE)
def test_hlt_with_nothing_unmasked_ends_the_run_at_once(guest, technique):
    run = outcome(guest, technique, max_instructions=BUDGET)
    assert_clean_end(run)
    assert "nothing can wake" in run.halted_reason, run.describe()
    assert run.text == CONSOLE[guest]
    assert run.exit_code is None
    assert run.instructions <= BUDGET
