"""The other yardstick: the same Multiboot images on qemu-system-i386, QEMU's own TCG.

Unicorn is QEMU's TCG cut out of QEMU, so QEMU running the same kernel shows what the
translator underneath hvsim can do when nothing stands between it and the guest. QEMU is a
separate process, so two things this module must do that Python cannot measure directly:

* **CPU time of a child.** ``resource.getrusage(RUSAGE_CHILDREN)`` counts children that have
  ended and been waited for; the difference around one ``subprocess.run`` is that QEMU's user +
  system time, all its threads included (TCG's vCPU thread, the main loop, RCU).
* **Start-up.** QEMU spends ~0.1 s building and tearing down a PC before and after the guest
  runs. ``run.py`` times ``empty.S`` (a guest that exits at once) in every round and subtracts
  it; what is left is the guest's work, which is what hvsim's own times measure.

The command line is the reference one of DESIGN.md and tests/qemu.py: the console is COM1 on
stdout, and isa-debug-exit makes QEMU exit with status (code << 1) | 1.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-i386"
EMPTY_GUEST = Path(__file__).resolve().parent / "empty.S"


@dataclass
class QemuResult:
    wall_s: float
    cpu_s: float                    # QEMU's user + system time, start-up included
    console: bytes
    exit_code: int | None
    halted_reason: str


def qemu_command(binary: str, image_path: Path, memory_mib: int = 64) -> list[str]:
    return [binary, "-m", str(memory_mib), "-kernel", str(image_path), "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-display", "none", "-no-reboot", "-nodefaults", "-monitor", "none"]


def find_qemu(binary: str = QEMU) -> str | None:
    """The path of ``binary`` if it can be run, else None."""
    return shutil.which(binary)


def qemu_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout.splitlines() or ["unknown"])[0]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_qemu(binary: str, image_path: Path, memory_mib: int = 64, timeout: float = 600) -> QemuResult:
    """Boot the image once; QEMU's wall and CPU time, console and the guest's exit code."""
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    try:
        done = subprocess.run(qemu_command(binary, image_path, memory_mib), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
        status, console = done.returncode, done.stdout
    except subprocess.TimeoutExpired as e:
        status, console = None, e.stdout or b""
    wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    if status is not None and status > 0 and status & 1:
        code = status >> 1
        return QemuResult(wall, cpu, console, code, f"guest wrote {code:#x} to isa-debug-exit")
    why = f"timed out after {timeout:g} s" if status is None else f"qemu exited with status {status}"
    return QemuResult(wall, cpu, console, None, why)
