"""One run of one guest under one technique: load, build the PC, run, report.

The command line, the tests and the benchmarks all come through here, so a run from
any of them is the same run.

A long run can report its progress: ``on_progress`` is called every ``progress_every``
seconds with a ``Progress`` snapshot, from a thread of its own. It has to be a thread:
the run loop sits inside Unicorn for as long as the guest does not exit (seconds, for a
compute-bound guest), and nothing in Unicorn calls back on a timer without changing where
slices end, which would change the run. The snapshot only reads, so a run with a progress
display is the same run as one without.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, IO

from .errors import HvError, ImageError
from .image.assemble import build_image
from .image.multiboot import parse_kernel
from .machine.memory import EXTENT_FRAMES, PAGE_SIZE, MachineMemory
from .domain import Domain, Progress
from .techniques import IN_PROGRESS, TECHNIQUES
from .vmm.monitor import RunResult
from .vmm.trace import Trace

DEFAULT_MEMORY_MIB = 64
DEFAULT_MAX_INSTRUCTIONS = 500_000_000
PROGRESS_EVERY_S = 0.25          # a display refreshed about four times a second


def load_image_bytes(path: str | Path) -> bytes:
    """The kernel image at ``path``: assembled first if it is a .S guest source.

    The path is the user's: it may name a device that never ends (/dev/zero), a FIFO whose
    open() blocks until someone writes, or a file far bigger than any kernel. Only regular
    files are read, and at most MAX_IMAGE_BYTES of them, whatever their size claims.
    """
    import stat

    from .image.multiboot import MAX_IMAGE_BYTES

    path = Path(path)
    too_big = f"{path}: larger than {MAX_IMAGE_BYTES >> 20} MiB, too big for a kernel image"
    try:
        mode, size = (st := path.stat()).st_mode, st.st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a directory, not a kernel image")
    if not stat.S_ISREG(mode):
        kind = ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
                else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")
        raise ImageError(f"{path}: cannot read a {kind}; a kernel image is a regular file")
    if size > MAX_IMAGE_BYTES:
        raise ImageError(too_big)
    if path.suffix in (".S", ".s", ".asm"):
        return build_image(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)     # the file may have grown, or /proc may lie
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(too_big)
    return data


def run_image(image: str | Path | bytes, technique: str = "native", memory_mib: int = DEFAULT_MEMORY_MIB,
              max_instructions: int = DEFAULT_MAX_INSTRUCTIONS, trace_file: IO[str] | None = None,
              keep_trace: bool = False, on_console: Callable[[int], None] | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              progress_every: float = PROGRESS_EVERY_S) -> RunResult:
    domain = build_domain(image, technique, memory_mib, max_instructions, Trace(trace_file, keep=keep_trace),
                          on_console)
    ticker = _ProgressTicker(domain, on_progress, progress_every) if on_progress else None
    try:
        if ticker:
            ticker.start()
        return domain.run()
    finally:
        if ticker:
            ticker.finish()
        domain.destroy()


def build_domain(image: str | Path | bytes, technique: str = "native", memory_mib: int = DEFAULT_MEMORY_MIB,
                 max_instructions: int = DEFAULT_MAX_INSTRUCTIONS, trace: Trace | None = None,
                 on_console: Callable[[int], None] | None = None) -> Domain:
    """A domain with the kernel loaded, ready to ``run`` (for callers that time the run alone,
    like the benchmarks); the caller must ``destroy`` it."""
    if technique not in TECHNIQUES and technique not in IN_PROGRESS:
        raise HvError(f"unknown technique {technique!r} (choose from {', '.join(TECHNIQUES)}; being built: "
                      f"{', '.join(IN_PROGRESS)})")
    extent_mib = EXTENT_FRAMES * PAGE_SIZE >> 20
    if memory_mib < 4 or memory_mib > 3072 or memory_mib % extent_mib:
        raise HvError(f"--memory {memory_mib}: give a multiple of {extent_mib} MiB between 4 and 3072")
    if max_instructions <= 0:
        raise HvError(f"--max-instructions {max_instructions}: must be positive")
    data = image if isinstance(image, bytes) else load_image_bytes(image)
    ram = memory_mib << 20
    kernel = parse_kernel(data, ram)
    domain = Domain(MachineMemory(ram), 1, ram, technique, trace or Trace(), max_instructions, on_console)
    domain.load(kernel)
    return domain


class _ProgressTicker(threading.Thread):
    """Calls ``report(domain.progress())`` every ``every`` seconds until ``finish``.

    A daemon: an interrupted run never waits for it. A report that raises ends the
    reports, not the run (a display is never worth a guest's result).
    """

    def __init__(self, domain: Domain, report: Callable[[Progress], None], every: float):
        super().__init__(name="hv-progress", daemon=True)
        self._domain, self._report, self._every = domain, report, every
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._every):
            try:
                self._report(self._domain.progress())
            except Exception:
                return

    def finish(self) -> None:
        """Stop, and return only once no report is running or will run."""
        self._done.set()
        if self.is_alive():
            self.join()
