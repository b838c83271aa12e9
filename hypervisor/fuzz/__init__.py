"""The fuzzer: random instruction streams, run under every technique, looking for VMM bugs.

A guest is hostile. Whatever bytes it runs, the monitor must answer with a *result* (an
exit code, a triple fault, a runaway stopped at its budget) and never with a Python
traceback, an abort of the whole process, a run past its instruction budget or a hang.
Hand-written guests test what their authors thought of; this package writes guests that
nobody thought of, thousands of them, and checks those promises on each.

Nothing in Unicorn or in the test tools does this for us, so the package provides:

* **a guest generator** (layout.py, templates.py, guest.py): a fixed prologue whose IDT
  catches every event and resumes the stream at its next chunk, and a random stream of
  weighted templates of privileged and sensitive instructions with hostile operands,
  mixed with random bytes. Stream ``INDEX`` of seed ``SEED`` is a pure function of the two.
* **a judge for one run** (run.py): ``run_stream`` runs a stream in-process through
  ``hypervisor.session.run_image`` with an instruction budget and a wall-clock timeout,
  and returns a ``RunRecord`` whose ``failure`` is a ``FailureKind`` or None.
* **campaigns** (campaign.py): streams in worker processes, so that an abort or a hang
  names the stream that caused it instead of ending the fuzzer.
* **replay** (replay.py): ``python -m hypervisor.fuzz --replay SEED:INDEX --technique trap``
  prints the stream's disassembly and its run; ``--bisect`` finds the guest instruction
  where an abort or hang begins.

An ``HvError`` from ``run_image`` (``UnsupportedGuest``: trap refuses a guest that turns
paging on) is the documented one-line refusal of the command-line contract, so it is an
outcome (``refused: ...``), not a failure.

    python -m hypervisor.fuzz --count 10000 --seed 1        # what `make fuzz` runs
    python -m hypervisor.fuzz --replay 1:140 --technique trap --bisect
"""
from .campaign import Summary, campaign
from .guest import Stream, disassemble, generate
from .run import DEFAULT_BUDGET, DEFAULT_TIMEOUT_S, FailureKind, RunRecord, run_stream, run_streams

__all__ = ["DEFAULT_BUDGET", "DEFAULT_TIMEOUT_S", "FailureKind", "RunRecord", "Stream", "Summary", "campaign",
           "disassemble", "generate", "run_stream", "run_streams"]
