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
from .machine.pc import PC
from .techniques import TECHNIQUES
from .vmm.monitor import RunResult
from .vmm.trace import Trace

DEFAULT_MEMORY_MIB = 64
DEFAULT_MAX_INSTRUCTIONS = 500_000_000


def load_image_bytes(path: str | Path) -> bytes:
    """The kernel image at ``path``: assembled first if it is a .S guest source."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not a kernel image")
    if path.suffix in (".S", ".s", ".asm"):
        return build_image(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None


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
    pc = PC(MachineMemory(ram), ram, on_console=on_console)
    pc.load_kernel(kernel)
    monitor = TECHNIQUES[technique](pc, Trace(trace_file, keep=keep_trace), max_instructions)
    return monitor.run()
