"""The referee: run a guest image on a real (emulated) PC and see what it prints.

Every guest must behave the same under every hvsim technique as it does on a bare machine, and
the bare machine we trust is QEMU's. This runner boots an image exactly as DESIGN.md says a
reference run does:

    qemu-system-i386 -m 64 -kernel IMAGE -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -device pc-testdev \
        -display none -no-reboot -nodefaults -monitor none

`-nodefaults` removes the default VGA, NIC and parallel port, so COM1 on stdio is the console;
`-no-reboot` turns a triple fault into an exit instead of an endless reboot loop. pc-testdev
(QEMU's test device, ports 0xe0-0xeb and 0x2000, a window at 0xff000000) is part of every hvsim
PC, so the referee has it too.
isa-debug-exit makes QEMU exit with status (value << 1) | 1 when the guest writes `value` to
port 0xf4, so an odd status decodes to the guest's exit code; anything else (a triple fault
exits 0, a timeout) is reported as None.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

QEMU = "qemu-system-i386"


def qemu_command(image_path, memory_mib: int = 64) -> list[str]:
    return [
        QEMU, "-m", str(memory_mib), "-kernel", str(image_path), "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-device", "pc-testdev",
        "-display", "none", "-no-reboot", "-nodefaults", "-monitor", "none",
    ]


def run_qemu(image_path, timeout: float = 30, memory_mib: int = 64) -> tuple[bytes, int | None]:
    """Boot the image; return (everything the guest sent to COM1, its exit code or None)."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")
    try:
        done = subprocess.run(
            qemu_command(image_path, memory_mib),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        return exc.stdout or b"", None
    status = done.returncode
    exit_code = status >> 1 if status > 0 and status & 1 else None
    return done.stdout, exit_code
