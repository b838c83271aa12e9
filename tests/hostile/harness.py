"""Running an attack guest on the bare machine and under each technique, without trusting hvsim.

A hostile guest is trying to break the monitor, and the ways it can succeed are not all
exceptions a test could catch: a Python traceback, yes, but also Unicorn aborting the whole
process (SIGABRT inside ``helper_lcall_protected``), or a run loop that never returns. So every
hvsim run here is a child process, ``python -m hypervisor run IMAGE --json``, with a wall-clock
timeout, and its end is judged from outside: the exit status (negative means a signal killed
it), stderr (no "Traceback"), and the JSON result on the last line of stdout.

The bare machine is qemu-system-i386 (tests/qemu.py). Outside guest RAM it has *unassigned*
space: reads return 0 and writes are dropped, so an access there is not a fault. hvsim maps only
RAM (and, under trap, its own monitor area at 0xFFC00000), so the same access ends the run as a
guest crash. Tests that touch such addresses say so and accept that clean end.

Runs are cached per (guest, machine): a test module starts all of its runs at once in a small
thread pool (``prefetch``), and each test collects the one it asks about, so the directory pays
for every guest once, two or three at a time.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hypervisor.image import build_image
from tests.qemu import QEMU, run_qemu

ROOT = Path(__file__).resolve().parents[2]
GUESTS = Path(__file__).resolve().parent / "guests"
TECHNIQUES = ("native", "trap", "hvm")
MAX_INSTRUCTIONS = 5_000_000       # every attack guest ends in a few thousand instructions
TIMEOUT_S = 20.0                   # a run that takes longer is a hang, and fails its test
PWNED_EXIT = 0x66                  # the exit code every escape payload ends with (hostile.S)
# Every escape payload first spins 4,000,000 instructions (hv_escaped in hostile.S); no attack
# guest runs more than ~400,000 otherwise. A run past this count ran a payload (or ran away).
ESCAPE_INSTRUCTIONS = 2_000_000
_RING0_UNDER_TRAP = re.compile(r"real cs rpl 0$", re.M)


@dataclass(frozen=True)
class Outcome:
    """How one run of one guest ended, on QEMU or under an hvsim technique."""

    machine: str                   # "qemu", "native" or "trap"
    console: bytes
    exit_code: int | None          # the value written to isa-debug-exit, or None
    halted_reason: str | None = None   # hvsim's own account of the end (None on QEMU)
    returncode: int | None = None  # the child's exit status; negative if a signal killed it
    stderr: str = ""
    timed_out: bool = False
    instructions: int | None = None
    has_result: bool = False       # hvsim printed its JSON result

    @property
    def text(self) -> str:
        return self.console.decode("latin-1")

    def describe(self) -> str:
        return (f"{self.machine}: exit_code={self.exit_code} returncode={self.returncode} "
                f"timed_out={self.timed_out} halted_reason={self.halted_reason!r}\n"
                f"--- console ---\n{self.text}--- stderr (tail) ---\n{self.stderr[-1500:]}")


@lru_cache(maxsize=None)
def _build_dir() -> Path:
    path = tempfile.mkdtemp(prefix="hostile-")
    atexit.register(shutil.rmtree, path, True)
    return Path(path)


@lru_cache(maxsize=None)
def image(name: str) -> Path:
    """The multiboot image of tests/hostile/guests/NAME.S (built once per session)."""
    path = _build_dir() / f"{name}.bin"
    path.write_bytes(build_image(GUESTS / f"{name}.S"))
    return path


def run_hv(name: str, technique: str, max_instructions: int = MAX_INSTRUCTIONS,
           timeout: float = TIMEOUT_S) -> Outcome:
    """``hv run --json`` in a child process of this checkout, judged from outside."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "hypervisor", "run", str(image(name)), "--technique", technique,
               "--json", "--max-instructions", str(max_instructions)]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome(technique, b"", None, returncode=None, timed_out=True,
                       stderr=(exc.stderr or b"").decode("latin-1"))
    stdout, stderr = done.stdout.decode("latin-1"), done.stderr.decode("latin-1")
    result = None
    lines = stdout.strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if not isinstance(result, dict):
        return Outcome(technique, b"", None, returncode=done.returncode, stderr=stderr + stdout)
    return Outcome(technique, result.get("console", "").encode("latin-1"), result.get("exit_code"),
                   halted_reason=result.get("halted_reason"), returncode=done.returncode,
                   stderr=stderr, instructions=result.get("instructions"), has_result=True)


def run_bare(name: str, timeout: float = 10.0) -> Outcome:
    """The guest on qemu-system-i386 (skips the test when QEMU is not installed)."""
    console, exit_code = run_qemu(image(name), timeout=timeout)
    return Outcome("qemu", console, exit_code)


_pool = ThreadPoolExecutor(max_workers=4)
_runs: dict[tuple, Future] = {}
_lock = threading.Lock()


def _future(name: str, machine: str, max_instructions: int) -> Future:
    key = (name, machine, None if machine == "qemu" else max_instructions)
    with _lock:
        if key not in _runs:
            image(name)
            if machine == "qemu":
                _runs[key] = _pool.submit(run_bare, name)
            else:
                _runs[key] = _pool.submit(run_hv, name, machine, max_instructions)
        return _runs[key]


def prefetch(names, machines=("qemu",) + TECHNIQUES, max_instructions: int = MAX_INSTRUCTIONS) -> None:
    """Start these runs in the background (QEMU only if installed); ``outcome`` collects them."""
    for name in names:
        for machine in machines:
            if machine != "qemu" or shutil.which(QEMU) is not None:
                _future(name, machine, max_instructions)


def outcome(name: str, machine: str, max_instructions: int = MAX_INSTRUCTIONS) -> Outcome:
    """One guest's run on ``machine`` ("qemu", "native" or "trap"), started now or by prefetch."""
    return _future(name, machine, max_instructions).result()


# -- what a test asserts ---------------------------------------------------------------------------
def assert_clean_end(run: Outcome, refusal: str | None = None) -> None:
    """The run ended as a result: no signal, no hang, no traceback, a halted_reason.

    ``refusal``: a phrase with which hvsim may instead decline the guest up front (exit status 2,
    one line on stderr naming the problem), as DESIGN.md allows for a guest a technique cannot run.
    """
    assert not run.timed_out, f"hung for more than {TIMEOUT_S} s\n{run.describe()}"
    assert run.returncode is not None and run.returncode >= 0, f"killed by a signal\n{run.describe()}"
    assert "Traceback" not in run.stderr and "Traceback" not in run.text, run.describe()
    if not run.has_result and refusal is not None:
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and refusal in lines[0], run.describe()
        return
    assert run.has_result, f"no JSON result\n{run.describe()}"
    assert run.halted_reason, run.describe()


def assert_no_escape(run: Outcome) -> None:
    """No escape payload ran, and under trap no guest code saw itself at real ring 0.

    A payload says PWNED and exits 0x66 if it can; if the console is refused to it and its fault
    cannot be delivered, its spin still shows in the instruction count.
    """
    assert b"PWNED" not in run.console and run.exit_code != PWNED_EXIT, run.describe()
    assert (run.instructions or 0) < ESCAPE_INSTRUCTIONS, (
        f"{run.instructions:,} instructions: an escape payload's spin ran\n{run.describe()}")
    if run.machine == "trap":
        assert not _RING0_UNDER_TRAP.search(run.text), f"guest code ran at real CPL 0\n{run.describe()}"


def assert_same_as_bare(run: Outcome, bare: Outcome) -> None:
    """Console and exit code exactly as on qemu-system-i386."""
    assert (run.text, run.exit_code) == (bare.text, bare.exit_code), (
        f"differs from the bare machine\n{run.describe()}\n--- qemu console ---\n{bare.text}"
        f"qemu exit_code={bare.exit_code}")


def assert_same_as_bare_or_stops_at(run: Outcome, bare: Outcome, first_line: str) -> None:
    """As on QEMU, or - where QEMU reads unassigned space and hvsim has nothing mapped - a guest
    crash at or after ``first_line``, the line announcing the first access outside RAM: the
    console is then QEMU's, cut short no earlier than that line."""
    if (run.text, run.exit_code) == (bare.text, bare.exit_code):
        return
    lines, expected = run.text.splitlines(), bare.text.splitlines()
    assert first_line in expected, f"the guest never reached {first_line!r} on QEMU\n{bare.text}"
    report = f"{run.describe()}\n--- qemu console ---\n{bare.text}qemu exit_code={bare.exit_code}"
    assert expected.index(first_line) < len(lines) <= len(expected) and lines == expected[:len(lines)], (
        f"neither the bare machine's result nor a clean stop after {first_line!r}\n{report}")
    assert run.exit_code is None and "crash" in (run.halted_reason or ""), report


def deprivileged(bare: Outcome) -> Outcome:
    """The bare machine's run as trap must show it: guest ring-0 code that prints its real CS RPL
    (``mov r, cs`` is sensitive and unprivileged) sees 1, the ring trap runs the guest kernel in."""
    text = _RING0_UNDER_TRAP.sub("real cs rpl 1", bare.text)
    return Outcome("qemu under trap", text.encode("latin-1"), bare.exit_code)


def assert_contained(run: Outcome, bare: Outcome, attack_line: str) -> None:
    """Under trap, an attack on the monitor ends one of three ways, each proof it went nowhere:

    * as on the bare machine (with ring-0 guest code seeing real RPL 1, see ``deprivileged``);
    * as on the bare machine up to some point at or after ``attack_line``, where hvsim stopped the
      run as a guest crash (it declined something it does not model);
    * as on the bare machine up to some point at or after ``attack_line``, where the guest received
      a fault QEMU did not give (the monitor refused an access, as a segment limit or a page
      protecting the monitor would).

    Anything else the guest saw differently after the attack - a value read, a call that worked -
    is the monitor showing through.
    """
    if (run.text, run.exit_code) in {(bare.text, bare.exit_code), (deprivileged(bare).text, bare.exit_code)}:
        return
    lines, expected = run.text.splitlines(), bare.text.splitlines()
    assert attack_line in expected, f"the guest never reached {attack_line!r} on QEMU\n{bare.text}"
    upto = expected.index(attack_line) + 1
    report = f"{run.describe()}\n--- qemu console ---\n{bare.text}qemu exit_code={bare.exit_code}"
    assert lines[:upto] == expected[:upto], f"differs before the attack\n{report}"
    same = upto
    while same < min(len(lines), len(expected)) and lines[same] == expected[same]:
        same += 1
    if same == len(lines):
        assert run.exit_code is None and "crash" in (run.halted_reason or ""), (
            f"stopped early, but not as a guest crash\n{report}")
    else:
        assert lines[same].startswith("kernel: vector "), (
            f"neither as on QEMU, nor stopped, nor a fault: line {same + 1} differs\n{report}")
