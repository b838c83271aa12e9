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


BENCHMARKS = GUESTS.parent / "benchmarks" / "guests"
BENCHMARK_RESULTS = {
    "compute": b"compute\nprimes below 2000000: 148933\nrepeats: 10\n",
    "callret": b"callret\ncall/ret pairs: 5000000\n",
    "portio": b"portio\nscratch out/in pairs: 200000\nmismatches: 0\n",
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(BENCHMARK_RESULTS))
def test_benchmark_guest_computes_the_right_answer_under_qemu(name, tmp_path):
    image = tmp_path / f"{name}.bin"
    image.write_bytes(build_image(BENCHMARKS / f"{name}.S"))
    assert run_qemu(image, timeout=60) == (BENCHMARK_RESULTS[name], 0)
