"""Self-modifying code of every kind runs as on the bare machine, whichever TLB fill the CPU uses.

guests/smc_*.S each print what their rewritten code computed; guests/expected/ holds what
qemu-system-i386 printed (tests/test_guests_qemu.py keeps the two in agreement, and the
conformance tests compare live QEMU with native and trap). This file runs them without QEMU,
under both techniques and both fills: the C fill (machine/native/tlbfill.c), which lets stores
to pages that never held code skip Unicorn's self-modifying-code check, and the CPU's own
walker (HVSIM_TLB=cpu), which sends every store through it.
"""
from pathlib import Path

import pytest

from hypervisor.image import build_image
from hypervisor.session import run_image

GUESTS = Path(__file__).resolve().parents[2] / "guests"
SMC_GUESTS = sorted(p.stem for p in GUESTS.glob("smc_*.S"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smc")
    paths = {}
    for name in SMC_GUESTS:
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(build_image(GUESTS / f"{name}.S"))
    return paths


def test_there_is_a_guest_for_each_kind_of_self_modifying_code():
    assert SMC_GUESTS == ["smc_ahead", "smc_copy", "smc_datapage", "smc_immediate", "smc_next", "smc_repmovs"]


@pytest.mark.parametrize("fill", ["c", "cpu"])
@pytest.mark.parametrize("technique", ["native", "trap"])
@pytest.mark.parametrize("name", SMC_GUESTS)
def test_rewritten_code_runs_as_rewritten(name, technique, fill, images, monkeypatch):
    monkeypatch.setenv("HVSIM_TLB", "cpu" if fill == "cpu" else "")
    # (each needs under 20,000 instructions: a stale translation that loops fails fast)
    result = run_image(images[name], technique=technique, max_instructions=200_000)
    assert result.console == (GUESTS / "expected" / f"{name}.txt").read_bytes(), result.halted_reason
    assert result.exit_code == int((GUESTS / "expected" / f"{name}.exit").read_text())
