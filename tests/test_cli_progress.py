"""`hv run`'s progress line: on a terminal only, never in the console's way, never in --json.

The line lives on stderr and is drawn by a thread while the run loop sits inside Unicorn, so
these tests check what a person at a terminal sees (a real pty), what a script sees (pipes,
--json: nothing new), and that the run itself is the same run with or without the line.
"""
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from hypervisor import cli
from hypervisor.domain import Progress
from hypervisor.session import run_image

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "guests" / "hello.S"
TIMER = ROOT / "guests" / "timer.S"
CALLRET = ROOT / "benchmarks" / "guests" / "callret.S"     # ~0.1-0.5 s: long enough to draw
CLEAR = "\r\x1b[K"


def on_pty(*hv_args, every: float = 0.25, timeout: float = 60) -> tuple[int, bytes]:
    """Run ``hv`` with stdout and stderr on one pseudo-terminal, as in a shell; what it shows."""
    code = ("import sys; import hypervisor.cli as c; "
            f"c.PROGRESS_EVERY_S = {every!r}; sys.exit(c.main(sys.argv[1:]))")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, hv_args)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:            # EIO: the child closed its side
                    break
                if not data:
                    break
                shown += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=10), shown


def test_on_a_terminal_a_progress_line_is_drawn_and_wiped_before_the_summary():
    status, shown = on_pty("run", CALLRET, "-t", "trap", every=0.001)
    text = shown.decode("latin-1")
    assert status == 0, text
    assert f"{CLEAR}[hv] trap: " in text and " exits, virtual " in text
    # whatever was drawn last is wiped before the summary line, and the console is intact
    assert text.rindex(CLEAR) < text.index("[hv] trap: guest wrote")
    assert "callret\r\n" in text and "call/ret pairs: 5000000\r\n" in text and "Traceback" not in text


def test_json_on_a_terminal_is_one_json_line_and_no_progress():
    status, shown = on_pty("run", HELLO, "--json", every=0.001)
    lines = shown.decode("latin-1").splitlines()
    assert status == 0 and "\x1b" not in shown.decode("latin-1")
    assert json.loads(lines[-1])["exit_code"] == 0


def test_no_progress_flag_draws_nothing_on_a_terminal():
    status, shown = on_pty("run", TIMER, "--no-progress", every=0.001)
    assert status == 0 and b"\x1b[K" not in shown


def test_piped_output_gets_no_progress_line():
    # stdout and stderr are pipes here: the user of a script sees exactly what it saw before
    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", str(TIMER)], cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and b"\r" not in done.stderr and b"\r" not in done.stdout


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def args(**kw):
    return SimpleNamespace(**{"json": False, "no_progress": False, **kw})


def test_progress_is_wanted_only_for_a_terminal_and_not_for_json_or_a_pipe(tmp_path):
    tty = FakeTerminal()
    with open(tmp_path / "out", "w") as regular_file:
        assert cli.wants_progress(args(), regular_file, tty)          # hv run x > file: still shown
        assert not cli.wants_progress(args(json=True), regular_file, tty)
        assert not cli.wants_progress(args(no_progress=True), regular_file, tty)
        assert not cli.wants_progress(args(), regular_file, io.StringIO())  # stderr not a terminal
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as piped:
        assert not cli.wants_progress(args(), piped, tty)              # hv run x | less


class FakeStdout:
    def __init__(self):
        self.buffer = io.BytesIO()


def test_the_line_waits_for_a_console_line_to_end_and_is_wiped_before_console_bytes():
    out, err = FakeStdout(), FakeTerminal()
    line = cli.ProgressLine("native", out, err, shares_terminal=True)
    p = Progress(instructions=1234, exits=5, virtual_ns=2_000_000, wall_s=0.5)
    line.show(p)
    assert err.getvalue() == CLEAR + "[hv] native: 1,234 instructions, 5 exits, virtual 0.002 s, wall 0.5 s"
    line.console(ord("a"))                        # wipe, then the byte
    assert err.getvalue().endswith(CLEAR) and out.buffer.getvalue() == b"a"
    drawn = err.getvalue()
    line.show(p)                                  # mid-line: drawing would overwrite "a"
    assert err.getvalue() == drawn
    line.console(ord("\n"))
    line.show(p)                                  # at a line start again: drawn
    assert err.getvalue().endswith("wall 0.5 s")
    line.close()
    assert err.getvalue().endswith(CLEAR)
    line.show(p)                                  # a late tick after the run: nothing
    assert err.getvalue().endswith(CLEAR)


def test_a_run_with_progress_reports_is_the_same_run_as_without():
    seen: list[Progress] = []
    quiet = run_image(TIMER, technique="trap", keep_trace=True)
    watched = run_image(TIMER, technique="trap", keep_trace=True, on_progress=seen.append,
                        progress_every=0.0005)
    assert (watched.console, watched.exits, watched.instructions, watched.virtual_ns, watched.trace) == \
           (quiet.console, quiet.exits, quiet.instructions, quiet.virtual_ns, quiet.trace)
    assert seen, "the ticker never reported"
    assert all(a.wall_s <= b.wall_s and a.instructions <= b.instructions for a, b in zip(seen, seen[1:]))
    assert seen[-1].instructions <= watched.instructions


def test_a_progress_report_that_raises_does_not_end_the_run():
    def broken(_):
        raise RuntimeError("display gone")
    result = run_image(TIMER, on_progress=broken, progress_every=0.0005)
    assert result.exit_code == 0
