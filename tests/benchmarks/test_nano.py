"""The nanobenchmark guests (benchmarks/micro/) run everywhere, and exit where they should.

Each loop and its baseline must end with exit code 0 on the bare machine (QEMU) and under every
technique, with the full K of the file; and the difference of their exits must be what the
operation costs in exits: a trapped ring-3 `int 0x80` is two (the int and the kernel's iretd),
under native one (the delivery), and so on. The runner's numbers are only as good as this.
"""

import pytest

from benchmarks.run import MICRO_DIR, MICRO_NOT_YET, MICRO_PAIRS, bench_micro, load_micro, micro_k
from hypervisor.image import build_image
from hypervisor.session import run_image
from tests.qemu import run_qemu

NANO_SOURCES = sorted({f for p in MICRO_PAIRS for f in (p.loop, p.baseline)})

# exits per operation, (exits(loop) - exits(baseline)) / K, per technique
EXPECTED_EXITS_PER_OP = {
    "syscall": {"native": 1, "trap": 2},     # native delivers the int; trap also emulates the iretd
    "in": {"native": 1, "trap": 1},
    "cr0": {"native": 0, "trap": 1},         # a ring-0 instruction natively; #GP at ring 1
    "callret": {"native": 0, "trap": 0},
    "divzero": {"native": 1, "trap": 2},     # same-ring iretd in ring 1 is emulated under trap
    "cli": {"native": 0, "trap": 1},
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", NANO_SOURCES)
def test_nano_guest_exits_with_code_0_on_qemu(name, tmp_path):
    image = tmp_path / "nano.bin"
    image.write_bytes(build_image(MICRO_DIR / name))
    console, exit_code = run_qemu(image, timeout=60)
    assert exit_code == 0, console


def test_every_loop_and_its_baseline_agree_on_k():
    for pair in MICRO_PAIRS:
        assert micro_k(MICRO_DIR / pair.loop) == micro_k(MICRO_DIR / pair.baseline), pair.name


def test_k_override_changes_the_loop_count_and_nothing_else():
    short = run_image(load_micro(MICRO_DIR / "nano_cr0.S", 300), technique="trap")
    longer = run_image(load_micro(MICRO_DIR / "nano_cr0.S", 600), technique="trap")
    assert (short.exit_code, longer.exit_code) == (0, 0)
    assert longer.exits["cr_access"] - short.exits["cr_access"] == 300


def test_short_nano_loops_cost_the_expected_exits_per_operation():
    anomalies: list[str] = []
    k = 200
    results = bench_micro(1, anomalies, k_override=k)
    assert anomalies == []
    for name, by_technique in EXPECTED_EXITS_PER_OP.items():
        for technique, expected in by_technique.items():
            got = results[name]["per_op_us"][technique]["exits_per_op"]
            # a set-up exit outside the loop (nano_cr0 reads CR0 once) shows up as 1/K
            assert abs(got - expected) <= 1 / k, (name, technique, got)
    for name in ("syscall", "divzero"):          # raw Unicorn cannot deliver them: not run, not faked
        assert results[name]["per_op_us"]["raw"]["median"] is None
    for name in MICRO_NOT_YET:
        assert results[name]["not_yet"] is True
