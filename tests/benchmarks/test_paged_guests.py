"""The paged benchmark guests (compute_paged, compute_paged_4m) compute what compute.S computes.

They are compute.S's sieve after the kernel has turned paging on: the sieve must be the same
code, QEMU must print the same answer, and every technique must print what QEMU prints and run
exactly as many instructions as native (the runner counts a difference as an anomaly). The
technique runs use REPEAT = 1 to stay fast; the answer does not depend on it.
"""
import re
from pathlib import Path

import pytest

from benchmarks.run import GUEST_DIR, RAW_FILL, guest_variants, turns_paging_on
from hypervisor.image import build_image
from hypervisor.session import run_image
from hypervisor.techniques import TECHNIQUES
from tests.qemu import run_qemu

PAGED = ["compute_paged", "compute_paged_4m"]
ANSWER = b"primes below 2000000: 148933\n"


def includes(source: Path) -> list[str]:
    return re.findall(r'^\s*\.include\s+"([^"]+)"', source.read_text(), flags=re.M)


def edited_copy(source: Path, old: str, new: str, into: Path) -> Path:
    """``source`` with ``old`` replaced by ``new``, written to ``into`` with its includes made
    absolute (they are relative to the original's directory)."""
    text = source.read_text()
    assert old in text, old
    text = re.sub(r'^(\s*\.include\s+")([^"/][^"]*)"',
                  lambda m: f'{m.group(1)}{(source.parent / m.group(2)).resolve()}"',
                  text.replace(old, new), flags=re.M)
    copy = into / source.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("name", PAGED)
def test_paged_guest_runs_compute_s_sieve_line_for_line(name):
    """The sieve is one file, spliced into each guest's main: the same instructions."""
    assert "include/sieve.S" in includes(GUEST_DIR / f"{name}.S")
    assert "include/sieve.S" in includes(GUEST_DIR / "compute.S")


@pytest.mark.qemu
@pytest.mark.parametrize("name", PAGED)
def test_paged_guest_prints_compute_s_answer_under_qemu(name, tmp_path):
    image = tmp_path / f"{name}.bin"
    image.write_bytes(build_image(GUEST_DIR / f"{name}.S"))
    assert run_qemu(image, timeout=60) == (f"{name}\n".encode() + ANSWER + b"repeats: 10\n", 0)


@pytest.mark.qemu
@pytest.mark.parametrize("name", PAGED)
def test_paged_guest_prints_the_same_under_every_technique_as_under_qemu(name, tmp_path):
    image = tmp_path / f"{name}.bin"
    image.write_bytes(build_image(edited_copy(GUEST_DIR / f"{name}.S", "REPEAT = 10", "REPEAT = 1", tmp_path)))
    console, exit_code = run_qemu(image, timeout=60)
    assert (console, exit_code) == (f"{name}\n".encode() + ANSWER + b"repeats: 1\n", 0)
    counts = set()
    for technique in TECHNIQUES:
        result = run_image(image, technique=technique)
        assert (result.console, result.exit_code) == (console, exit_code), technique
        counts.add(result.instructions)
    assert len(counts) == 1


def test_trap_counts_the_hidden_faults_a_shadow_would_take_for_the_paged_sieve(tmp_path):
    """Under trap every TLB miss of the paged sieve is a walk of the guest's tables in the C
    fill; the hidden faults counted are those a shadow page table would take (the first read and
    write of each page; nothing flushes during the sieve), the same number every run, however
    often QEMU's TLB misses; with paging off there are none."""
    def hidden(name):
        copy = edited_copy(GUEST_DIR / f"{name}.S", "REPEAT = 10", "REPEAT = 1", tmp_path)
        return run_image(build_image(copy), technique="trap").exits.get("shadow_page_fault", 0)
    assert hidden("compute") == 0
    first = hidden("compute_paged")
    assert 489 <= first < 600                     # the sieve's 489 pages, the kernel's, the tables'
    assert hidden("compute_paged") == first


def test_raw_fill_is_not_asked_to_run_a_guest_that_turns_paging_on():
    assert all(turns_paging_on(GUEST_DIR / f"{name}.S") for name in PAGED)
    assert not turns_paging_on(GUEST_DIR / "compute.S")
    for name in PAGED:
        assert RAW_FILL not in guest_variants(name)
        assert {"native", "trap", "hvm", "raw", "raw-uncounted"} <= set(guest_variants(name))
