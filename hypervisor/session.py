"""One run of one guest under one technique: load, build the PC, run, report.

The command line, the tests and the benchmarks all come through here, so a run from
any of them is the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, IO

from .errors import HvError, ImageError
from .image.assemble import build_image
from .image.multiboot import parse_kernel
from .machine.memory import EXTENT_FRAMES, PAGE_SIZE, MachineMemory
from .domain import Domain
from .techniques import TECHNIQUES
from .vmm.monitor import RunResult
from .vmm.trace import Trace

DEFAULT_MEMORY_MIB = 64
DEFAULT_MAX_INSTRUCTIONS = 500_000_000


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
              keep_trace: bool = False, on_console: Callable[[int], None] | None = None) -> RunResult:
    if technique not in TECHNIQUES:
        raise HvError(f"unknown technique {technique!r} (choose from {', '.join(TECHNIQUES)})")
    extent_mib = EXTENT_FRAMES * PAGE_SIZE >> 20
    if memory_mib < 4 or memory_mib > 3072 or memory_mib % extent_mib:
        raise HvError(f"--memory {memory_mib}: give a multiple of {extent_mib} MiB between 4 and 3072")
    if max_instructions <= 0:
        raise HvError(f"--max-instructions {max_instructions}: must be positive")
    data = image if isinstance(image, bytes) else load_image_bytes(image)
    ram = memory_mib << 20
    kernel = parse_kernel(data, ram)
    domain = Domain(MachineMemory(ram), 1, ram, technique, Trace(trace_file, keep=keep_trace),
                    max_instructions, on_console)
    domain.load(kernel)
    try:
        return domain.run()
    finally:
        domain.destroy()
