"""Replaying one stream: its disassembly, its run, and where a failure starts.

``--replay SEED:INDEX`` regenerates the stream, prints it template by template, runs it
in this process with a trace, and prints the outcome, the last exits and, for a failure,
the traceback and the guest instruction being handled. An abort or a hang leaves no
traceback, so ``--bisect`` runs the stream in child processes with smaller and smaller
budgets: the failure appearing at budget N but not at N - 1 names the N-th guest
instruction (its EIP is in the runaway report at N - 1).
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys

from .campaign import HANG_GRACE_S, _worker_command, child_environment
from .guest import Stream, disassemble, generate
from .layout import LOAD, STREAM
from .run import FailureKind, RunRecord, run_stream


def _run_child(seed: int, index: int, technique: str, budget: int, timeout_s: float) -> RunRecord:
    """One stream in a fresh process: an abort or a hang there is a record, not our death."""
    env = child_environment()
    try:
        p = subprocess.run(_worker_command(seed, technique, index, index + 1, budget, timeout_s),
                           capture_output=True, env=env, timeout=timeout_s + HANG_GRACE_S)
    except subprocess.TimeoutExpired:
        return RunRecord(technique, index, "hang", failure=FailureKind.HANG)
    for line in reversed(p.stdout.decode("utf-8", "replace").splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "start" not in message:
            return RunRecord.from_json(message)
    return RunRecord(technique, index, "abort", failure=FailureKind.ABORT,
                     detail=p.stderr.decode("utf-8", "replace")[-2000:])


def first_failing_budget(seed: int, index: int, technique: str, kind: FailureKind,
                         budget: int, timeout_s: float) -> int | None:
    """The smallest instruction budget at which the failure still happens (a bisection).

    For an abort or a hang there is no traceback to say which guest instruction did it;
    the failure appearing at budget N and not at N - 1 says: the N-th instruction.
    """
    def fails(n: int) -> bool:
        return _run_child(seed, index, technique, n, timeout_s).failure is kind

    if not fails(budget):
        return None
    lo, hi = 1, budget
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def replay(case: str, techniques: list[str], budget: int, timeout_s: float, show_trace: int = 12,
           bisect: bool = False) -> int:
    """Print stream SEED:INDEX, then run it under each technique. 1 if any run failed."""
    seed, index = (int(x, 0) for x in case.split(":"))
    stream = generate(seed, index)
    print(f"stream {stream.name}: {len(stream.chunks)} chunks, {stream.stream_end - STREAM} bytes of stream, "
          f"image {len(stream.image)} bytes")
    for line in disassemble(stream):
        print(line)
    status = 0
    for technique in techniques:
        sys.stdout.flush()
        if bisect:
            status |= _replay_bisect(stream, technique, budget, timeout_s)
        else:
            status |= _replay_run(stream, technique, budget, timeout_s, show_trace)
    return status


def _replay_run(stream: Stream, technique: str, budget: int, timeout_s: float, show_trace: int) -> int:
    trace = io.StringIO()
    record = run_stream(stream, technique, budget, timeout_s, trace_file=trace)
    print(f"\n{technique}: {record.outcome} (exit code {record.exit_code}, {record.instructions} instructions, "
          f"{record.wall_s:.3f} s)")
    exits = trace.getvalue().splitlines()
    if exits:
        print(f"last {min(show_trace, len(exits))} of {len(exits)} exits:")
        for line in exits[-show_trace:]:
            e = json.loads(line)
            print(f"  {e['eip']} {e['reason']:<24} {e['insn_text'] or '':<28} {e['qualification']}")
    if record.failure:
        print(f"FAILURE: {record.failure.value}")
        if record.trigger:
            print(f"guest instruction: {record.trigger}")
        print(record.detail)
        return 1
    return 0


def _replay_bisect(stream: Stream, technique: str, budget: int, timeout_s: float) -> int:
    record = _run_child(stream.seed, stream.index, technique, budget, timeout_s)
    why = record.halted_reason or (record.detail.splitlines()[0] if record.detail else "")
    print(f"\n{technique}: {record.outcome} ({why})")
    if record.failure is None:
        return 0
    n = first_failing_budget(stream.seed, stream.index, technique, record.failure, budget, timeout_s)
    if n is None:
        print(f"{record.failure.value} did not happen again: not deterministic")
        return 1
    before = _run_child(stream.seed, stream.index, technique, n - 1, timeout_s) if n > 1 else None
    print(f"the {record.failure.value} first happens with a budget of {n} guest instructions")
    eip = re.search(r"EIP (0x[0-9a-fA-F]+)", before.halted_reason) if before else None
    if eip:
        at = int(eip.group(1), 16)
        print(f"after {n - 1} instructions the guest was at EIP {at:#010x} ({before.halted_reason})")
        if LOAD <= at < LOAD + len(stream.image):
            from capstone import CS_ARCH_X86, CS_MODE_32, Cs
            for insn in Cs(CS_ARCH_X86, CS_MODE_32).disasm(stream.image[at - LOAD:at - LOAD + 15], at, 1):
                print(f"the instruction that triggers it: {insn.bytes.hex(' ')}  {insn.mnemonic} {insn.op_str}")
    print(record.detail)
    return 1


