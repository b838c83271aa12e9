"""Each guest in guests/ prints, on the reference machine, exactly what guests/expected/ says.

The expected files were recorded from QEMU and checked by hand against each guest's documented
intent (guests/README.md); this test keeps QEMU and those files in agreement, so they can serve
as the oracle for every hvsim technique.
"""
from pathlib import Path

import pytest

from hypervisor.image import build_image
from tests.qemu import run_qemu

GUESTS = Path(__file__).resolve().parent.parent / "guests"
EXPECTED = GUESTS / "expected"
GUEST_SOURCES = sorted(p for p in GUESTS.glob("*.S") if p.name != "runtime.S")


@pytest.mark.qemu
@pytest.mark.parametrize("source", GUEST_SOURCES, ids=lambda p: p.stem)
def test_guest_console_and_exit_code_match_expected_under_qemu(source, tmp_path):
    image = tmp_path / f"{source.stem}.bin"
    image.write_bytes(build_image(source))
    console, exit_code = run_qemu(image)
    assert console == (EXPECTED / f"{source.stem}.txt").read_bytes()
    assert exit_code == int((EXPECTED / f"{source.stem}.exit").read_text())
