"""KVM's own unit tests as referee: kvm-unit-tests' i386 kernels under native, against QEMU.

kvm-unit-tests (github.com/kvm-unit-tests/kvm-unit-tests) is the suite KVM itself is tested
with. Its tests are Multiboot kernels that print to COM1 and end through isa-debug-exit at
0xf4, like this project's guests, but written by others for a real PC: they find the local
APIC, ask fw_cfg how many CPUs there are, and use QEMU's pc-testdev. Each test named here
runs to a deterministic end on qemu-system-i386; under ``--technique native`` hvsim must
print the same bytes and end with the same exit code.

Nothing of kvm-unit-tests is in this repository. Set ``KUT_DIR`` to a checkout (the tests
build it, ``./configure --arch=i386 && make``, if x86/*.flat is missing); without it, or
without qemu-system-i386, every test here is skipped.

Every i386 kvm-unit-test turns paging on before ``main`` (x86/cstart.S ``prepare_32``). Under
hvm (the guest keeps ring 0, EPT maps its memory) all six match QEMU too. Under trap (shadow
paging, task switches on the virtual TR) cmpxchg8b, setjmp and eventinj match; the other three
cannot, each because a sensitive but unprivileged instruction shows the guest the real CPU
(Popek and Goldberg's gap), which the tests pin: emulator's ``test_ltr`` runs ``str`` and
``sgdt`` and writes through the GDT address it got, the monitor's; umip asks ``read_cs() & 3``
to know its ring and gets 1 at CPL 0 (``mov ax, cs``); taskswitch names the task it is in with
``str`` and gets the monitor's TR.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hypervisor.session import run_image

QEMU = "qemu-system-i386"
MEMORY_MIB = 256
# The tests issue 7 names; each ends deterministically on QEMU 7.2 (emulator with 2 failures that
# belong to QEMU's TCG, which a faithful machine reproduces).
TESTS = ["cmpxchg8b", "setjmp", "umip", "eventinj", "emulator", "taskswitch"]
TRAP_MATCHES = ["cmpxchg8b", "setjmp", "eventinj"]
TRAP_SENSITIVE = {"emulator": "FAIL", "umip": "FAIL: exception from mov %cr0, %eax",
                  "taskswitch": "Unknown TSS fff8"}


def kut_dir() -> Path:
    value = os.environ.get("KUT_DIR")
    if not value:
        pytest.skip("KUT_DIR does not name a kvm-unit-tests checkout")
    path = Path(value)
    if not (path / "x86").is_dir():
        pytest.skip(f"KUT_DIR={value} is not a kvm-unit-tests checkout (no x86/)")
    return path


def flat(name: str) -> Path:
    """The built test kernel, building the suite once if it is not built yet."""
    root = kut_dir()
    image = root / "x86" / f"{name}.flat"
    if not image.exists():
        if not (root / "config.mak").exists():
            subprocess.run(["./configure", "--arch=i386"], cwd=root, check=True, capture_output=True)
        subprocess.run(["make", "-j2"], cwd=root, check=True, capture_output=True)
    return image


def run_qemu(image: Path) -> tuple[bytes, int | None]:
    """The reference run, as issue 7 gives it: pc-testdev, isa-debug-exit, 256 MiB."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")
    command = [QEMU, "-nodefaults", "-device", "pc-testdev",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-serial", "stdio",
               "-display", "none", "-no-reboot", "-monitor", "none", "-m", str(MEMORY_MIB),
               "-kernel", str(image)]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    status = done.returncode
    return done.stdout, (status >> 1 if status > 0 and status & 1 else None)


@pytest.mark.parametrize("name", TESTS)
def test_native_prints_what_qemu_prints(name):
    image = flat(name)
    console, exit_code = run_qemu(image)
    result = run_image(image, technique="native", memory_mib=MEMORY_MIB)
    assert result.console.decode("latin-1") == console.decode("latin-1"), result.halted_reason
    assert result.exit_code == exit_code, result.halted_reason


@pytest.mark.parametrize("name", TESTS)
def test_hvm_prints_what_qemu_prints(name):
    image = flat(name)
    console, exit_code = run_qemu(image)
    result = run_image(image, technique="hvm", memory_mib=MEMORY_MIB)
    assert result.console.decode("latin-1") == console.decode("latin-1"), result.halted_reason
    assert result.exit_code == exit_code, result.halted_reason


@pytest.mark.parametrize("name", TRAP_MATCHES)
def test_trap_prints_what_qemu_prints_where_nothing_sensitive_is_asked(name):
    image = flat(name)
    console, exit_code = run_qemu(image)
    result = run_image(image, technique="trap", memory_mib=MEMORY_MIB, max_instructions=50_000_000)
    assert result.console.decode("latin-1") == console.decode("latin-1"), result.halted_reason
    assert result.exit_code == exit_code, result.halted_reason


@pytest.mark.parametrize("name", sorted(TRAP_SENSITIVE))
def test_trap_parts_from_qemu_where_a_sensitive_instruction_shows_ring_1(name):
    image = flat(name)
    console, _ = run_qemu(image)
    result = run_image(image, technique="trap", memory_mib=MEMORY_MIB, max_instructions=50_000_000)
    text = result.console.decode("latin-1")
    assert text != console.decode("latin-1")
    assert TRAP_SENSITIVE[name] in text or result.halted_reason.startswith("guest crash")


# bt (being built, docs/architecture.md "Binary translation"): the sensitive instructions are
# callouts, so umip and taskswitch match where trap cannot; one does not match yet.
BT_GAPS = {"emulator": "halts at its SSE tests, after 'imul eax, mem, imm' (the SSE alignment stop is not "
                       "mapped through the cache yet, as for guests/sse_align.S)"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=BT_GAPS[n], strict=True))
                                  if n in BT_GAPS else n for n in TESTS])
def test_bt_prints_what_qemu_prints(name):
    image = flat(name)
    console, exit_code = run_qemu(image)
    result = run_image(image, technique="bt", memory_mib=MEMORY_MIB, max_instructions=50_000_000)
    assert result.console.decode("latin-1") == console.decode("latin-1"), result.halted_reason
    assert result.exit_code == exit_code, result.halted_reason
