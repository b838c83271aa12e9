"""Campaigns: many streams in worker processes, so that an abort is a finding, not the end.

A bug in Unicorn (or a longjmp across the VMM's Python frames) can kill the process
outright, taking an in-process fuzzer and its findings with it. A campaign therefore
runs streams in child processes (``python -m hypervisor.fuzz --worker``), BATCH at a
time, two at once by default (one per core). A worker announces each stream before
running it; when it dies, the parent knows which stream killed it, records an abort with
the worker's last words (faulthandler's Python stack), and starts a new worker after it.
A worker silent past the stream's timeout plus HANG_GRACE_S is stuck in C: it is killed,
and the stream recorded as a hang.

The summary counts streams, guest instructions and outcomes per technique, groups the
failures into distinct bugs (``signature``) with every SEED:INDEX that shows each, and,
since every stream runs under every technique, says how often native and trap printed
the same console and exit code (informational: x86's sensitive instructions differ by
design).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from .guest import generate
from .run import DEFAULT_BUDGET, DEFAULT_TIMEOUT_S, FailureKind, RunRecord, run_stream

DEFAULT_TECHNIQUES = ("native", "trap")
BATCH = 400                      # streams per worker process
HANG_GRACE_S = 30.0              # a worker silent this long past a stream's timeout is hung


def package_root() -> str:
    """The directory that holds ``hypervisor/``: a worker must import this same code."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class Summary:
    seed: int
    budget: int
    timeout_s: float
    wall_s: float = 0.0
    streams: dict[str, int] = field(default_factory=dict)
    instructions: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    agreement: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, records: list[RunRecord], seed: int, budget: int, timeout_s: float, wall_s: float) -> "Summary":
        s = cls(seed, budget, timeout_s, wall_s)
        by_tech: dict[str, list[RunRecord]] = {}
        for rec in records:
            by_tech.setdefault(rec.technique, []).append(rec)
        for tech, recs in by_tech.items():
            s.streams[tech] = len(recs)
            s.instructions[tech] = sum(r.instructions for r in recs)
            s.outcomes[tech] = dict(Counter(r.outcome for r in recs).most_common())
        s.failures = [{"kind": r.failure.value, "technique": r.technique, "case": f"{seed}:{r.index}",
                       "outcome": r.outcome, "detail": r.detail, "trigger": r.trigger, "where": r.where}
                      for r in sorted(records, key=lambda r: (r.technique, r.index)) if r.failure]
        if len(by_tech) > 1:
            digests: dict[int, list[str]] = {}
            for rec in records:
                if rec.digest:
                    digests.setdefault(rec.index, []).append(rec.digest)
            complete = [d for d in digests.values() if len(d) == len(by_tech)]
            s.agreement = {"compared": len(complete),
                           "same console and exit code": sum(len(set(d)) == 1 for d in complete)}
        return s

    def distinct(self) -> list[dict]:
        """Failures grouped by what went wrong, most frequent first, with every case listed."""
        groups: dict[tuple, dict] = {}
        for f in self.failures:
            key = signature(f)
            group = groups.setdefault(key, {"kind": f["kind"], "technique": f["technique"], "count": 0,
                                            "cases": [], "outcome": f["outcome"], "trigger": f["trigger"],
                                            "where": f.get("where", ""), "detail": f["detail"],
                                            "instructions": Counter()})
            group["count"] += 1
            group["cases"].append(f["case"])
            group["instructions"][mnemonic(f["trigger"])] += 1
        for group in groups.values():
            group["instructions"] = dict(group["instructions"].most_common())
        return sorted(groups.values(), key=lambda g: (-g["count"], g["kind"], g["technique"]))

    def as_json(self) -> dict:
        d = asdict(self)
        d["distinct"] = self.distinct()
        return d

    def text(self) -> str:
        out = [f"seed {self.seed}, budget {self.budget} instructions, timeout {self.timeout_s} s, "
               f"{self.wall_s:.1f} s wall"]
        total = sum(self.streams.values())
        for tech, n in self.streams.items():
            out.append(f"{tech}: {n} streams, {self.instructions[tech]:,} guest instructions")
            for outcome, count in self.outcomes[tech].items():
                out.append(f"  {count:6d}  {outcome}")
        if self.wall_s:
            out.append(f"{total / self.wall_s:.1f} runs/s")
        if self.agreement:
            out.append(f"{' and '.join(self.streams)} agree (console and exit code) on "
                       f"{self.agreement['same console and exit code']} of {self.agreement['compared']} streams "
                       f"(informational: sensitive instructions differ by design)")
        kinds = Counter(f["kind"] for f in self.failures)
        out.append(f"failures: {len(self.failures)}" + (" (" + ", ".join(f"{k}: {n}" for k, n in kinds.items()) + ")"
                                                         if kinds else ""))
        groups = self.distinct()
        if groups:
            out.append(f"{len(groups)} distinct (replay one with --replay SEED:INDEX --technique T):")
        for g in groups:
            more = f" and {len(g['cases']) - 6} more" if len(g["cases"]) > 6 else ""
            out.append(f"  {g['count']:5d} x {g['kind']} under {g['technique']}: {g['outcome']}")
            out.append(f"        cases {' '.join(g['cases'][:6])}{more}")
            if g["trigger"]:
                out.append(f"        e.g. guest instruction {g['trigger']}")
            if g["where"]:
                out.append(f"        in {g['where']}")
            if len(g["instructions"]) > 1:
                out.append("        guest instructions: " + ", ".join(f"{m or '?'} x{n}" for m, n in g["instructions"].items()))
            for line in g["detail"].splitlines()[-3:]:
                out.append(f"        {line}")
        return "\n".join(out)


def signature(failure: dict) -> tuple:
    """What makes two failures the same bug: kind, technique, the exception's type and the
    VMM functions it came through. The guest instructions that led there are listed per
    group, not used to split it: one bug is usually reached many ways."""
    lines = failure["detail"].strip().splitlines()
    if failure["kind"] in (FailureKind.ABORT.value, FailureKind.HANG.value):
        return failure["kind"], failure["technique"], lines[0] if lines else "", ""
    error = lines[-1].split(":", 1)[0] if lines else ""
    return failure["kind"], failure["technique"], error, failure.get("where", "")


def mnemonic(trigger: str) -> str:
    """The mnemonic in a trigger ("0x00108000 (CS 0x8): 0f 01 15 ...  lgdt [...] [...]")."""
    return trigger.split("  ", 1)[1].split()[0] if "  " in trigger else ""


class Progress:
    """One line on stderr, rewritten in place."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.failed, self.enabled = total, 0, 0, enabled
        self.started = time.perf_counter()
        self.lock = threading.Lock()

    def tick(self, record: RunRecord) -> None:
        with self.lock:
            self.done += 1
            self.failed += record.failure is not None
            if self.enabled and (self.done % 25 == 0 or self.done == self.total or record.failure):
                rate = self.done / max(1e-9, time.perf_counter() - self.started)
                sys.stderr.write(f"\rfuzz: {self.done}/{self.total} runs, {self.failed} failures, {rate:.1f} runs/s ")
                sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def last_words(stderr: str) -> str:
    """What a dead worker said: faulthandler's innermost Python frames, or its last lines."""
    lines = stderr.strip().splitlines()
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    if frames and "Fatal Python error" in stderr:     # faulthandler: innermost frame first
        return "\n".join(frames[:4])
    return "\n".join(lines[-4:])


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _worker_command(seed: int, technique: str, start: int, stop: int, budget: int, timeout_s: float) -> list[str]:
    return [sys.executable, "-m", "hypervisor.fuzz", "--worker", "--seed", str(seed), "--technique", technique,
            "--start", str(start), "--count", str(stop - start), "--budget", str(budget), "--timeout", str(timeout_s)]


def run_batch(seed: int, technique: str, start: int, stop: int, budget: int, timeout_s: float,
              emit: Callable[[RunRecord], None], command: Callable[[int, int], list[str]] | None = None,
              grace_s: float = HANG_GRACE_S) -> None:
    """Run streams [start, stop) in child processes; a dead or silent child is a finding.

    ``command(first, stop)`` is the worker's command line (the real worker by default).
    """
    env = child_environment()
    if command is None:
        def command(first: int, stop: int) -> list[str]:
            return _worker_command(seed, technique, first, stop, budget, timeout_s)
    next_index = start
    while next_index < stop:
        errors = tempfile.TemporaryFile()      # a file, not a pipe: a chatty worker never blocks
        proc = subprocess.Popen(command(next_index, stop), stdout=subprocess.PIPE, stderr=errors, env=env)
        current: int | None = None
        buffer = b""
        hung = False
        deadline = time.monotonic() + timeout_s + grace_s
        stdout = proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                hung = True
                proc.kill()
                break
            data = os.read(stdout, 65536)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:      # something in the VMM printed to stdout: not ours
                    continue
                deadline = time.monotonic() + timeout_s + grace_s
                if "start" in message:
                    current = message["start"]
                else:
                    record = RunRecord.from_json(message)
                    emit(record)
                    current = None
                    next_index = record.index + 1
        code = proc.wait()
        proc.stdout.close()
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
        errors.close()
        if current is None and code == 0 and not hung:
            next_index = max(next_index, stop)
            continue
        if current is None:        # died between streams: blame the next one it would have run
            current = next_index
        if hung:
            kind, detail = FailureKind.HANG, f"no word from the worker for {timeout_s + grace_s:.0f} s; killed"
        else:
            kind = FailureKind.ABORT
            why = f"signal {_signal_name(-code)}" if code < 0 else f"exit status {code}"
            detail = f"worker died ({why})\n" + last_words(stderr)
        emit(RunRecord(technique, current, kind.value, failure=kind, detail=detail))
        next_index = current + 1


def campaign(seed: int, count: int, techniques: Iterable[str], budget: int = DEFAULT_BUDGET,
             timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 2, progress: bool = True,
             start: int = 0) -> Summary:
    techniques = tuple(techniques)
    tasks = [(tech, lo, min(lo + BATCH, start + count)) for lo in range(start, start + count, BATCH)
             for tech in techniques]
    tasks.reverse()
    records: list[RunRecord] = []
    bar = Progress(count * len(techniques), progress)
    lock = threading.Lock()

    def emit(record: RunRecord) -> None:
        with lock:
            records.append(record)
        bar.tick(record)

    def work() -> None:
        while True:
            with lock:
                if not tasks:
                    return
                tech, lo, hi = tasks.pop()
            run_batch(seed, tech, lo, hi, budget, timeout_s, emit)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.finish()
    return Summary.of(records, seed, budget, timeout_s, time.perf_counter() - started)


def run_worker(seed: int, technique: str, start: int, count: int, budget: int, timeout_s: float) -> int:
    """The child's side: announce each stream, run it, report it, one JSON line each."""
    import faulthandler
    faulthandler.enable()            # an abort leaves the Python stack on stderr for the report
    out = sys.stdout
    for index in range(start, start + count):
        out.write(json.dumps({"start": index}) + "\n")
        out.flush()
        record = run_stream(generate(seed, index), technique, budget, timeout_s)
        out.write(json.dumps(record.as_json()) + "\n")
        out.flush()
    return 0


