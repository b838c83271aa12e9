"""The nanobenchmark guests (benchmarks/micro/) run everywhere, and exit where they should.

Each loop and its baseline must end with exit code 0 on the bare machine (QEMU) and under every
technique, with the full K of the file; and the difference of their exits must be what the
operation costs in exits: a trapped ring-3 `int 0x80` is two (the int and the kernel's iretd),
under native one (the delivery), and so on. The runner's numbers are only as good as this.
"""

import pytest

from benchmarks.run import MICRO_DIR, MICRO_PAIRS, NOT_RUN_PAGING, bench_micro, load_micro, micro_k
from hypervisor.image import build_image
from hypervisor.session import run_image
from tests.benchmarks.test_paged_guests import edited_copy
from tests.qemu import run_qemu

NANO_SOURCES = sorted({f for p in MICRO_PAIRS for f in (p.loop, p.baseline)})

# exits per operation, (exits(loop) - exits(baseline)) / K, per technique. hvm counts what
# would exit under VT-x: its guest's own faults and ints are delivered without an exit.
EXPECTED_EXITS_PER_OP = {
    "syscall": {"native": 1, "trap": 2, "hvm": 0},   # native delivers the int; trap also emulates the iretd
    "syscall_paged": {"native": 1, "trap": 2, "hvm": 0},
    "in": {"native": 1, "trap": 1, "hvm": 1},
    "cr0": {"native": 0, "trap": 1, "hvm": 0},       # a ring-0 instruction natively; #GP at ring 1
    "callret": {"native": 0, "trap": 0, "hvm": 0},
    "pgfault": {"native": 1, "hvm": 0},              # trap: by kind, below
    "divzero": {"native": 1, "trap": 2, "hvm": 0},   # same-ring iretd in ring 1 is emulated under trap
    "ptemod": {"native": 0, "hvm": 1},               # INVLPG exiting
    "tlbmiss": {"native": 0, "trap": 128, "hvm": 0},   # trap: 128 (see FIRST_PASS), then the cached shadow
    "shadowfault": {"native": 0, "trap": 1, "hvm": 0},   # trap: the walk after the dropped entry
    "cli": {"native": 0, "trap": 1, "hvm": 0},
}
# Exits of the whole run rather than of each operation: the first pass over nano_tlbmiss's 128
# pages fills trap's shadow (128 hidden faults); every later miss is answered from it.
FIRST_PASS = {("tlbmiss", "trap")}
# Under trap, by kind: the hidden faults too, exactly, since the cached shadow drops an entry only
# when the guest stores to its page table or invalidates it (pgfault's one refill is its baseline's).
EXPECTED_TRAP_EXITS_BY_KIND = {
    "pgfault": {"exception_nmi": 1, "iret": 1, "shadow_page_fault": 0},   # the #PF reflected, the iretd
    "ptemod": {"invlpg": 1, "shadow_page_fault": 1},
    "shadowfault": {"shadow_page_fault": 1},
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
            if (name, technique) in FIRST_PASS:
                expected /= k
            # a set-up exit outside the loop (nano_cr0 reads CR0 once) shows up as 1/K
            assert abs(got - expected) <= 1 / k, (name, technique, got)
    for name, kinds in EXPECTED_TRAP_EXITS_BY_KIND.items():
        got = results[name]["per_op_us"]["trap"]["exits"]
        for kind, expected in kinds.items():
            assert abs(got.get(kind, 0) - expected) <= 1 / k, (name, kind, got)
    for name in ("syscall", "syscall_paged", "divzero", "pgfault"):   # raw Unicorn cannot deliver them
        assert results[name]["per_op_us"]["raw"]["median"] is None
    for name in ("ptemod", "tlbmiss"):           # raw Unicorn pages by itself; raw-fill cannot
        assert results[name]["per_op_us"]["raw"]["median"] is not None
        if "raw-fill" in results[name]["per_op_us"]:
            assert results[name]["per_op_us"]["raw-fill"] == {"median": None, "skipped": NOT_RUN_PAGING}


def test_ptemod_fails_rather_than_times_a_stale_translation(tmp_path):
    """The loop checks what it read: without its invlpg the TLB keeps the old frame (as on the
    bare machine, which may), the sum is wrong, and the run exits 1 instead of 0 (not under trap)."""
    source = edited_copy(MICRO_DIR / "nano_ptemod.S", "K = 20000", "K = 200", tmp_path)
    assert run_image(build_image(source), technique="native").exit_code == 0
    (tmp_path / "stale").mkdir()
    stale = edited_copy(source, "    invlpg [V]\n", "    nop\n", tmp_path / "stale")
    assert run_image(build_image(stale), technique="native").exit_code == 1
    # trap's shadow follows every store to a page table it was built from, and drops the TLB with
    # the entry: the new frame is seen at once, which the SDM allows too (a TLB may drop any entry).
    assert run_image(build_image(stale), technique="trap").exit_code == 0


def test_pgfault_takes_one_fault_per_iteration_and_checks_it(tmp_path):
    """The handler counts its faults and the loop its reads: K of each, or exit code 1."""
    source = edited_copy(MICRO_DIR / "nano_pgfault.S", "K = 20000", "K = 100", tmp_path)
    result = run_image(build_image(source), technique="trap")
    assert result.exit_code == 0 and result.exits["exception_nmi"] == 100
    (tmp_path / "remapped").mkdir()
    remapped = edited_copy(source, "mov dword ptr [PTE_V], 0x600007", "mov dword ptr [PTE_V], 0x601007",
                           tmp_path / "remapped")
    assert run_image(build_image(remapped), technique="native").exit_code == 1   # read 2, not 1
