"""trap's cached shadow page tables, seen from whole guests (hypervisor/memory/shadow.py).

The shadow keeps one space per guest CR3 (at most ``shadow.SPACES``), so a CR3 load back to an
address space already seen finds its shadow whole; every guest page-table frame a shadow was
built from is write-protected, and a store to one drops the entries built from it. The random
edits, switches and invalidations are tests/memory/test_shadow_fill.py's; these show the cache
at work in the paging guests, which tests/test_guests_qemu.py compares with the bare machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.machine.native.tlbfill import native_fill
from hypervisor.memory import shadow
from hypervisor.session import run_image

GUESTS = Path(__file__).resolve().parents[2] / "guests"
pytestmark = pytest.mark.skipif(native_fill() is None, reason="the C TLB fill is not built")


def run(name: str):
    result = run_image(GUESTS / f"{name}.S", technique="trap")
    assert result.console == (GUESTS / "expected" / f"{name}.txt").read_bytes()
    return result, result.details["shadow"]


def test_a_cr3_load_back_to_a_known_address_space_finds_its_shadow_whole():
    """paging_tasks switches between two address spaces on every timer tick: two spaces are
    made, every later switch reuses one, and the hidden faults are those of filling each
    space once, not a refill after every switch (which a shadow dropped on CR3 loads takes)."""
    result, stats = run("paging_tasks")
    assert stats["spaces_made"] == 2 and stats["evictions"] == 0
    assert stats["spaces_reused"] >= 100
    assert result.exits["shadow_page_fault"] < 30 < stats["hits"]


def test_a_store_to_a_guest_page_table_is_performed_and_drops_what_was_built_from_it():
    """paging_cr3 rewrites PTEs of both address spaces, one while the other is loaded: the stores
    reach the write-protected tables, the entries built from them go, and the guest reads what
    the bare machine reads (the console)."""
    _, stats = run("paging_cr3")
    assert stats["table_writes"] >= 2 and stats["entries_dropped"] >= 2


def test_the_bound_on_cached_spaces_evicts_the_least_recently_loaded(monkeypatch):
    """With room for one space, every switch of paging_tasks evicts the other: the guest runs
    the same, and pays a refill per switch."""
    monkeypatch.setattr(shadow, "SPACES", 1)
    result, stats = run("paging_tasks")
    assert stats["spaces_reused"] == 0 and stats["evictions"] >= 100
    assert result.exits["shadow_page_fault"] > 100


def test_invlpg_drops_the_page_from_the_shadow():
    _, stats = run("paging_ad")
    assert stats["invalidations"] == 2


def test_the_shadow_counts_are_the_same_run_after_run():
    assert run("paging_tasks")[1] == run("paging_tasks")[1]


def test_more_spaces_than_the_cache_keeps_and_a_table_all_of_them_share():
    """paging_spaces cycles through twelve address spaces (the cache keeps eight: each switch finds
    its space evicted) and writes a page table every space shares from one of them: the stores
    drop what the other spaces built from it, and every read sees the bare machine's frame."""
    _, stats = run("paging_spaces")
    assert stats["evictions"] >= 12 and stats["spaces_made"] == stats["evictions"] + 8
    assert stats["table_writes"] == 72 and stats["entries_dropped"] >= 36
