"""The ``hv`` command: run a guest kernel, build one, or compare the techniques on it.

Every user error becomes one line on stderr and exit status 2; a guest that crashes
is a result (``halted_reason``), not an error. Exit status of ``hv run``: the value
the guest wrote to isa-debug-exit (masked to 8 bits), or 1 if it ended any other way.

On a terminal, ``hv run`` keeps one progress line on stderr (``ProgressLine``). The terminal
does not know that two streams share it: the guest's console goes to stdout byte by byte,
and a status line drawn in the middle of a console line would overwrite it. So the line is
drawn only where the console's cursor stands at the start of a line, and wiped before the
next console byte. It is a hand-written ``\\r`` line, not rich or tqdm: neither is a
dependency, neither could redraw while the run loop sits inside Unicorn without the thread
``session.run_image`` starts anyway, and rich's live display replaces ``sys.stdout`` while
it runs, where the console is written byte by byte to stdout's own buffer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import threading
from typing import IO

from .domain import Progress
from .errors import HvError
from .session import (DEFAULT_MAX_INSTRUCTIONS, DEFAULT_MEMORY_MIB, PROGRESS_EVERY_S, build_domain,
                      load_image_bytes, run_image)
from .techniques import IN_PROGRESS, TECHNIQUES

EPILOG = """techniques:
""" + "\n".join(f"  {name:8} {cls.description}" for name, cls in TECHNIQUES.items()) + "\n" + "\n".join(
    f"  {name:8} (being built) {cls.description}" for name, cls in IN_PROGRESS.items()) + """

examples:
  hv run guests/hello.S                         run a guest on the bare machine
  hv run guests/sensitive.S --technique trap    ... deprivileged, and watch x86 fail Popek-Goldberg
  hv run guests/timer.S --technique trap --trace trace.jsonl   every exit, as JSON lines
  hv compare guests/sensitive.S                 one table: every technique against native
  hv build guests/hello.S -o hello.bin          a multiboot image qemu-system-i386 -kernel boots
  hv bench --quick                              every technique against raw Unicorn and QEMU, one round
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit 2, no usage dump
        print(f"hv: error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", type=_positive, default=DEFAULT_MEMORY_MIB, metavar="MiB",
                   help=f"guest RAM in MiB, a multiple of 2 (default {DEFAULT_MEMORY_MIB}, like qemu -m 64)")
    p.add_argument("--max-instructions", type=_positive, default=DEFAULT_MAX_INSTRUCTIONS, metavar="N",
                   help=f"stop a runaway guest after N guest instructions (default {DEFAULT_MAX_INSTRUCTIONS:,})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hv", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                     description="hvsim: run real x86 guest kernels on a Unicorn CPU under a Python "
                                 "virtual machine monitor, one virtualization technique at a time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run a guest and show its console",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                         description="Run IMAGE (a multiboot kernel, or a guests/*.S source that is "
                                     "assembled first) and write its COM1 console to stdout as it runs.")
    run.add_argument("image", metavar="IMAGE", help="multiboot kernel (ELF32 or a.out-kludge flat) or .S source")
    run.add_argument("--technique", "-t", default="native", metavar="NAME",
                     help=f"how the guest shares the CPU: {', '.join(TECHNIQUES)} (default native); "
                          f"being built: {', '.join(IN_PROGRESS)}")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object (console, exit_code, technique, halted_reason, "
                          "instructions, exits, wall_s) as the last line instead of streaming the console")
    run.add_argument("--trace", metavar="FILE",
                     help="write every exit as a JSON line: EIP, instruction, reason, handler, explanation")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress line. By default, when stderr is a terminal (and stdout is not a "
                          "pipe, and not --json), one line on stderr, redrawn 4 times a second, shows "
                          "instructions, exits, the guest's virtual time and wall time; it is wiped "
                          "when the run ends")
    _add_run_options(run)

    build = sub.add_parser("build", help="assemble a .S guest into a multiboot image",
                           description="Assemble an Intel-syntax guest (keystone) and wrap it in a Multiboot v1 "
                                       "a.out-kludge image that both hv and qemu-system-i386 -kernel boot.")
    build.add_argument("source", metavar="SOURCE.S")
    build.add_argument("-o", "--output", required=True, metavar="IMAGE")

    compare = sub.add_parser("compare", help="run a guest under every technique and compare with native",
                             description="Run IMAGE under every technique and print one table: same console "
                                         "as native?, the first differing line, exits by reason, "
                                         "instructions, wall time and the ratio to native.")
    compare.add_argument("image", metavar="IMAGE")
    compare.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    _add_run_options(compare)

    translate = sub.add_parser("translate", help="show one guest block before and after binary translation",
                               description="Translate the guest block at ADDR (default: the kernel's entry) as "
                                           "binary translation does, and print both: every guest instruction "
                                           "with what the translator made of it (IDENT, a rewritten branch, or "
                                           "a callout and why), then the code in the translation cache.")
    translate.add_argument("image", metavar="IMAGE")
    translate.add_argument("--at", type=_address, metavar="ADDR",
                           help="guest address of the block (hex with 0x, or decimal); paging is off at entry, "
                                "so it is also the physical address")
    translate.add_argument("--json", action="store_true", help="print the two listings as one JSON object")
    translate.add_argument("--memory", type=_positive, default=DEFAULT_MEMORY_MIB, metavar="MiB",
                           help=f"guest RAM in MiB (default {DEFAULT_MEMORY_MIB})")

    # Listed here for --help; main() hands everything after "bench" to the runner untouched.
    sub.add_parser("bench", help="time every technique, raw Unicorn and QEMU on the benchmark guests and "
                                 "the nanobenchmarks (benchmarks/run.py; `hv bench --help` for its options)",
                   add_help=False)
    return parser


def _isatty(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):     # replaced or closed streams
        return False


def _is_pipe(stream: IO) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, ValueError, OSError):
        return False


def wants_progress(args, stdout: IO, stderr: IO) -> bool:
    """A progress line only for a person watching: stderr a terminal, stdout not a pipe into
    another program or pager (whose screen the line would scribble on), and not --json."""
    return not (args.json or args.no_progress) and _isatty(stderr) and not _is_pipe(stdout)


def format_progress(technique: str, p: Progress) -> str:
    return (f"[hv] {technique}: {p.instructions:,} instructions, {p.exits:,} exits, "
            f"virtual {p.virtual_ns / 1e9:.3f} s, wall {p.wall_s:.1f} s")


class ProgressLine:
    """One status line on stderr, rewritten in place with ``\\r`` and wiped at the end.

    ``show`` is called from the progress thread, ``console`` from the run loop: one lock
    keeps a redraw from landing between a wipe and the console byte it made room for.
    When stdout is the same terminal (``shares_terminal``), the line is drawn only while the
    console's cursor is at the start of a line, and wiped before each console byte.
    """
    CLEAR = "\r\x1b[K"           # carriage return, erase to the end of the line

    def __init__(self, technique: str, out: IO, err: IO, shares_terminal: bool):
        self.technique, self.out, self.err = technique, out, err
        self.shares_terminal = shares_terminal
        self._lock = threading.Lock()
        self._drawn = False
        self._closed = False
        self._console_at_line_start = True

    def show(self, p: Progress) -> None:
        with self._lock:
            if self._closed or (self.shares_terminal and not self._console_at_line_start):
                return
            width = shutil.get_terminal_size((80, 24)).columns - 1   # a wrapped line cannot be redrawn
            self.err.write(self.CLEAR + format_progress(self.technique, p)[:max(width, 10)])
            self.err.flush()
            self._drawn = True

    def console(self, byte: int) -> None:
        with self._lock:
            if self._drawn and self.shares_terminal:
                self._wipe()
            self.out.buffer.write(bytes((byte,)))
            self.out.buffer.flush()
            self._console_at_line_start = byte == 0x0A

    def close(self) -> None:
        with self._lock:
            if self._drawn:
                self._wipe()
            self._closed = True

    def _wipe(self) -> None:
        self.err.write(self.CLEAR)
        self.err.flush()
        self._drawn = False


def _cmd_run(args) -> int:
    stream = None if args.json else (lambda b: (sys.stdout.buffer.write(bytes((b,))), sys.stdout.buffer.flush()))
    line = None
    if wants_progress(args, sys.stdout, sys.stderr):
        line = ProgressLine(args.technique, sys.stdout, sys.stderr, shares_terminal=_isatty(sys.stdout))
        stream = line.console
    trace_file = None
    try:
        if args.trace:
            try:
                trace_file = open(args.trace, "w")
            except OSError as e:
                raise HvError(f"--trace {args.trace}: {e.strerror}") from None
        result = run_image(args.image, technique=args.technique, memory_mib=args.memory,
                           max_instructions=args.max_instructions, trace_file=trace_file, on_console=stream,
                           on_progress=line.show if line else None, progress_every=PROGRESS_EVERY_S)
    finally:
        if line:
            line.close()
        if trace_file:
            trace_file.close()
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True))
    else:
        if result.console and not result.console.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        print(f"[hv] {result.technique}: {result.halted_reason}; {result.instructions:,} instructions, "
              f"{sum(result.exits.values()):,} exits, {result.wall_s:.3f} s", file=sys.stderr)
    return (result.exit_code & 0xFF) if result.exit_code is not None else 1


def first_difference(reference: bytes, other: bytes) -> str | None:
    """The first line where ``other`` differs from ``reference``, shown as 'native | other'."""
    a, b = reference.decode("latin-1").splitlines(), other.decode("latin-1").splitlines()
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else "<none>"
        y = b[i] if i < len(b) else "<none>"
        if x != y:
            return f"line {i + 1}: {x!r} | {y!r}"
    return None


def compare_techniques(image: bytes, memory_mib: int, max_instructions: int) -> list[dict]:
    rows, native = [], None
    for name in TECHNIQUES:
        result = run_image(image, technique=name, memory_mib=memory_mib, max_instructions=max_instructions)
        native = native or result
        rows.append({
            "technique": name,
            "same_console": result.console == native.console,
            "same_exit_code": result.exit_code == native.exit_code,
            "first_difference": first_difference(native.console, result.console),
            "differing_lines": sum(1 for x, y in zip(native.console.splitlines(), result.console.splitlines()) if x != y)
                               + abs(len(native.console.splitlines()) - len(result.console.splitlines())),
            "exit_code": result.exit_code, "halted_reason": result.halted_reason,
            "exits": result.exits, "instructions": result.instructions, "wall_s": result.wall_s,
            "ratio_to_native": result.wall_s / native.wall_s if native.wall_s else None,
        })
    return rows


def _cmd_compare(args) -> int:
    image = load_image_bytes(args.image)
    rows = compare_techniques(image, args.memory, args.max_instructions)
    if args.json:
        print(json.dumps({"image": args.image, "rows": rows}, sort_keys=True))
        return 0
    print(f"{'technique':10} {'console':10} {'exit':>5} {'instructions':>13} {'exits':>7} {'wall s':>8} {'÷native':>8}  exits by reason")
    for r in rows:
        same = "same" if r["same_console"] else f"{r['differing_lines']} differ"
        exits = ", ".join(f"{k}={v}" for k, v in sorted(r["exits"].items(), key=lambda kv: -kv[1]))
        print(f"{r['technique']:10} {same:10} {str(r['exit_code']):>5} {r['instructions']:>13,} "
              f"{sum(r['exits'].values()):>7,} {r['wall_s']:>8.3f} {r['ratio_to_native'] or 0:>8.2f}  {exits}")
    for r in rows:
        if r["first_difference"]:
            print(f"{r['technique']}: first difference at {r['first_difference']}")
    return 0


def _cmd_build(args) -> int:
    data = load_image_bytes(args.source)
    try:
        with open(args.output, "wb") as f:
            f.write(data)
    except OSError as e:
        raise HvError(f"{args.output}: {e.strerror}") from None
    print(f"[hv] wrote {args.output} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (0x100000, or 1048576)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text}: a guest address has 32 bits")
    return value


def _cmd_translate(args) -> int:
    from .techniques.bt.show import format_translation, translation

    domain = build_domain(args.image, "native", args.memory)
    try:
        memory = domain.pc.memory
        address = domain.pc.cpu.eip if args.at is None else args.at          # the kernel's entry
        if not memory.contains(address):
            raise HvError(f"--at {address:#x}: outside the guest's {memory.size >> 20} MiB of RAM")

        def read(at: int, length: int) -> bytes:
            return memory.read(at, max(0, min(length, memory.size - at))) if memory.contains(at) else b""
        t = translation(read, address)
    finally:
        domain.destroy()
    print(json.dumps(t) if args.json else format_translation(t))
    return 0


def _cmd_bench(argv: list[str]) -> int:
    """``make bench`` as a command: benchmarks/run.py, which lives in the source tree beside the
    package (the benchmark guests are sources there, not package data)."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise HvError(f"hv bench needs the hvsim source tree: no benchmarks/run.py in {root} "
                      "(install with `pip install -e .` from a checkout)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner = importlib.import_module("benchmarks.run")
    try:
        return runner.main(argv, prog="hv bench")
    except SystemExit as e:              # the runner's argparse: --help, or a usage error
        return e.code if isinstance(e.code, int) else 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:          # the runner's own flags: it parses them itself
            return _cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return {"run": _cmd_run, "build": _cmd_build, "compare": _cmd_compare,
                "translate": _cmd_translate}[args.command](args)
    except HvError as e:
        print(f"hv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
