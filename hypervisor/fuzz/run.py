"""Running one stream and judging it: the four promises a monitor makes to a hostile guest.

A run must end in a *result* (``halted_reason`` says why), never with a Python exception
escaping ``run_image``, never past its instruction budget, and within its wall-clock
timeout. Unicorn cannot enforce a wall-clock limit on Python code and Python cannot
interrupt Unicorn's C loop, so the limit is a SIGALRM that raises ``WallTimeout`` (a
BaseException, so no ``except Exception`` in the VMM swallows it) between bytecodes,
plus a check of the elapsed time after the run. The fifth promise, that the process
survives, can only be checked from outside: see campaign.py.

When the VMM catches its own exception and reports it as "hvsim internal error" (so a
user never sees a traceback), the fuzzer still wants the traceback: it wraps
``Monitor.crash`` to keep the exception that is current when the report is made. For
every exception it also names the guest instruction the monitor was handling, by
finding the monitor in the traceback's frames and disassembling at its EIP.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Iterable, Iterator

from .guest import Stream, generate
from .layout import ENTRY, LOAD, STUBS

DEFAULT_BUDGET = 20_000          # guest instructions per stream
DEFAULT_TIMEOUT_S = 5.0          # wall-clock seconds per stream


class FailureKind(str, Enum):
    EXCEPTION = "exception"          # a Python exception escaped run_image
    INTERNAL = "internal error"      # the VMM caught its own exception and called it a guest crash
    ABORT = "abort"                  # the process died (SIGABRT, SIGSEGV, ...)
    HANG = "hang"                    # the process stopped answering (stuck in C)
    TIMEOUT = "timeout"              # the run took longer than its wall-clock limit
    OVER_BUDGET = "over budget"      # more guest instructions than the budget allowed
    NO_REASON = "no halted reason"   # the run ended without saying why


class WallTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so that no ``except Exception`` in the VMM eats it."""


@dataclass
class RunRecord:
    """What one stream did under one technique."""
    technique: str
    index: int
    outcome: str                     # the halted reason with its numbers blanked: a category
    exit_code: int | None = None
    instructions: int = 0
    wall_s: float = 0.0
    failure: FailureKind | None = None
    detail: str = ""                 # traceback tail, or the reason for the failure
    trigger: str = ""                # the guest instruction the VMM was handling, when known
    where: str = ""                  # the VMM functions the exception came through, innermost first
    digest: str = ""                 # console and exit code, to compare techniques
    halted_reason: str = ""

    def as_json(self) -> dict:
        d = asdict(self)
        d["failure"] = self.failure.value if self.failure else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunRecord":
        d = dict(d)
        d["failure"] = FailureKind(d["failure"]) if d.get("failure") else None
        return cls(**d)


_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


def categorize(halted_reason: str | None) -> str:
    """A halted reason as a category: numbers blanked, so that runs can be counted by it."""
    if not halted_reason:
        return "(none)"
    return _NUMBERS.sub("N", halted_reason)[:90]


def where_in(stream: Stream, eip: int) -> str:
    """Which template of the stream ``eip`` lies in, in words (the one before it too, since
    Unicorn reports a software interrupt or an I/O exit with EIP already past it)."""
    if ENTRY <= eip < STUBS + 0x800:
        return "in the fuzz guest's event handler"
    for i, piece in enumerate(stream.pieces):
        if piece.address <= eip < piece.address + piece.size:
            before = f', after "{stream.pieces[i - 1].template}"' if i and eip == piece.address else ""
            return f'in template "{piece.template}"{before}'
    return ""


def _exit_eip(frame_locals: dict, plain: bool) -> int | None:
    """The guest EIP an exit handler is working on, if its frame names one: ``exit.eip`` or
    ``event.eip``, or (``plain``: in a Unicorn hook, where it is the hook's) a plain ``eip``."""
    for name in ("exit", "event"):
        eip = getattr(frame_locals.get(name), "eip", None)
        if isinstance(eip, int):
            return eip
    eip = frame_locals.get("eip") if plain else None
    return eip if isinstance(eip, int) else None


def _trigger_from(tb, stream: Stream) -> str:
    """The guest instruction the monitor was handling when an exception escaped.

    Found by walking the traceback: the monitor is the innermost frame's ``self`` that
    has ``cpu`` and ``pc``; the instruction is at the EIP that the outermost monitor frame
    inside the last Unicorn hook (or, outside hooks, the outermost exit handler) was
    handling: the exit as it arrived, since inner frames may already have moved the CPU's
    EIP to a handler. Else the CPU's EIP. Best effort: "" if there is no monitor.
    """
    import unicorn
    binding = os.path.dirname(unicorn.__file__) + os.sep
    monitor, exit_eip, in_hook = None, None, False
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.startswith(binding):
            in_hook, exit_eip = True, None            # what came before was outside this hook
        else:
            candidate = frame.f_locals.get("self")
            if hasattr(candidate, "cpu") and hasattr(candidate, "pc"):
                monitor = candidate
                if exit_eip is None:
                    exit_eip = _exit_eip(frame.f_locals, plain=in_hook)
        tb = tb.tb_next
    if monitor is None:
        return ""
    try:
        from unicorn.x86_const import UC_X86_REG_CS, UC_X86_REG_EIP
        from capstone import CS_ARCH_X86, CS_MODE_32, Cs
        cpu_eip = monitor.cpu.uc.reg_read(UC_X86_REG_EIP)
        eip = cpu_eip if exit_eip is None else exit_eip & 0xFFFFFFFF
        cs = monitor.cpu.uc.reg_read(UC_X86_REG_CS)
        where = where_in(stream, eip)
        where = f" [{where}]" if where else ""
        moved = f" (the CPU is now at {cpu_eip:#010x})" if cpu_eip != eip else ""
        try:
            code = bytes(monitor.cpu.uc.mem_read(eip, 15))
        except Exception:
            code = b""
        if not any(code) and LOAD <= eip < LOAD + len(stream.image):    # RAM already released
            code = stream.image[eip - LOAD:eip - LOAD + 15]
        if not code:
            return f"EIP {eip:#010x} (CS {cs:#x}, not readable){where}{moved}"
        for insn in Cs(CS_ARCH_X86, CS_MODE_32).disasm(code, eip, 1):
            return f"{eip:#010x} (CS {cs:#x}): {insn.bytes.hex(' ')}  {insn.mnemonic} {insn.op_str}{where}{moved}"
        return f"{eip:#010x} (CS {cs:#x}): {code.hex(' ')} (not an instruction){where}{moved}"
    except Exception as e:         # the CPU may be gone: the report must still be made
        return f"(could not read the guest's EIP: {e})"


# The exception behind an "internal error" report, with its trigger worked out while the
# guest's memory still exists; and the stream being run, for the trigger's template name.
_caught: list[tuple[BaseException, str]] = []
_running: list[Stream] = []


def _capture_internal_errors() -> None:
    """Keep the exception behind a "hvsim internal error" halted reason, for its traceback.

    The monitor turns its own exceptions into a crash report (so no user sees a
    traceback); the fuzzer still wants the traceback. ``Monitor.crash`` is called from the
    ``except`` block, so the exception is still current there. Installed once; a no-op
    where the monitor has no ``crash`` (older code lets the exception escape instead).
    """
    from ..vmm import monitor
    original = getattr(monitor.Monitor, "crash", None)
    if original is None or getattr(original, "_fuzz_wrapped", False):
        return

    def crash(self, *args, **kwargs):
        current = sys.exc_info()[1]
        if current is not None and not _caught and _running:
            _caught.append((current, _trigger_from(current.__traceback__, _running[0])))
        return original(self, *args, **kwargs)

    crash._fuzz_wrapped = True
    monitor.Monitor.crash = crash


def _describe(e: BaseException, stream: Stream, record: RunRecord, trigger: str | None = None) -> None:
    """Fill in the traceback's last lines, the VMM functions it passed through (innermost
    first: what tells one bug from another) and the guest instruction being handled."""
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    record.detail = "".join(lines[-6:]).rstrip()
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f"{os.sep}hypervisor{os.sep}" in f.filename and f"{os.sep}fuzz{os.sep}" not in f.filename]
    names = [f"{os.path.basename(f.filename)}:{f.name}" for f in reversed(frames)]
    names = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1] and "<" not in n]
    record.where = " < ".join(names[:7])
    record.trigger = trigger if trigger is not None else _trigger_from(e.__traceback__, stream)


def run_stream(stream: Stream, technique: str, budget: int = DEFAULT_BUDGET,
               timeout_s: float = DEFAULT_TIMEOUT_S, trace_file=None) -> RunRecord:
    """Run one stream in this process and judge the result; never raises for a guest's deed."""
    from ..errors import HvError
    from ..session import run_image
    import unicorn
    binding = os.path.dirname(unicorn.__file__) + os.sep
    use_alarm = threading.current_thread() is threading.main_thread()
    previous = None

    def alarm(_signum, frame):
        # Raised inside the Unicorn binding's own glue (a hook's ctypes wrapper, before its
        # try), the exception would be lost in ctypes and the hook would return garbage to
        # Unicorn: try again a millisecond later, when the VMM's own code is running.
        if frame is not None and frame.f_code.co_filename.startswith(binding):
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        raise WallTimeout()

    _capture_internal_errors()
    _caught.clear()
    _running[:] = [stream]
    started = time.perf_counter()
    result = None
    record = RunRecord(technique, stream.index, "")
    try:
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            result = run_image(stream.image, technique=technique, max_instructions=budget,
                               trace_file=trace_file)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except WallTimeout:
        record.failure, record.outcome = FailureKind.TIMEOUT, "timeout"
        record.detail = f"still running after {timeout_s} s"
    except HvError as e:
        record.outcome = f"refused: {type(e).__name__}"
        record.detail = str(e)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:        # a guest must not be able to raise anything at all
        record.failure, record.outcome = FailureKind.EXCEPTION, f"exception: {type(e).__name__}"
        _describe(e, stream, record)
    finally:
        if use_alarm and previous is not None:
            signal.signal(signal.SIGALRM, previous)
    record.wall_s = time.perf_counter() - started
    if result is not None:
        record.outcome = categorize(result.halted_reason)
        record.halted_reason = result.halted_reason or ""
        record.exit_code = result.exit_code
        record.instructions = result.instructions
        record.digest = hashlib.sha1(bytes(result.console) + repr(result.exit_code).encode()).hexdigest()[:12]
        if not result.halted_reason:
            record.failure, record.detail = FailureKind.NO_REASON, "halted_reason is empty"
        elif "internal error" in result.halted_reason:
            record.failure, record.detail = FailureKind.INTERNAL, result.halted_reason
            if _caught:
                exception, trigger = _caught[0]
                _describe(exception, stream, record, trigger)
        elif result.instructions > budget:
            record.failure = FailureKind.OVER_BUDGET
            record.detail = f"{result.instructions} instructions, budget {budget}: {result.halted_reason}"
        elif record.wall_s > timeout_s:
            record.failure, record.detail = FailureKind.TIMEOUT, f"took {record.wall_s:.2f} s: {result.halted_reason}"
    return record


def run_streams(seed: int, technique: str, indices: Iterable[int], budget: int = DEFAULT_BUDGET,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[RunRecord]:
    for index in indices:
        yield run_stream(generate(seed, index), technique, budget, timeout_s)
