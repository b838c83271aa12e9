"""The C TLB fill for paging off (machine/native/tlbfill.{c,py}): faster stores, same machine.

Which path a store takes inside Unicorn is not visible from outside, except as time: one test
measures it, with a wide margin. The rest prove that nothing else changes: the switch to the
CPU's own walker when the guest sets CR0.PG and back, write protection, the monitor's read
hook, self-modifying code (including the case the first-fetch TLB flush exists for), exact
instruction counts, and the fallback without the C library. Each also pins the Unicorn
behaviour it relies on, so that a library upgrade that changes one fails here first.
"""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
from unicorn import (UC_ERR_EXCEPTION, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE_PROT, UC_PROT_EXEC,
                     UC_PROT_READ, UcError)

from hypervisor.image import build_image
from hypervisor.machine.cpu import CR0, CR3, CR4, EAX, ECX, EIP, ESP, Cpu
from hypervisor.machine.native import tlbfill
from hypervisor.machine.native.tlbfill import TlbFill
from hypervisor.session import build_domain

CODE, DATA, PD = 0x1000, 0x20000, 0x30000
GUESTS = Path(__file__).resolve().parents[2] / "guests"

needs_native = pytest.mark.skipif(tlbfill.native_fill() is None, reason="tlbfill.c was not built")


def asm(source: str, address: int = CODE) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    ks.syntax = KS_OPT_SYNTAX_INTEL        # (pins keystone's radix; every number here is hex)
    return bytes(ks.asm(source, address)[0])


def make_cpu(native: bool) -> tuple[Cpu, TlbFill]:
    """A flat ring-0 CPU with paging off, 4 MiB of RAM, and a 4 MiB PSE identity page at PD."""
    cpu = Cpu(tcg_buffer_mib=4, counting="count")     # these tests drive emu_start themselves
    cpu.uc.mem_map(0, 0x400000)
    cpu.uc.mem_write(PD, struct.pack("<I", 0x83))
    cpu.write(CR3, PD)
    cpu.write(CR4, 0x10)                   # PSE
    cpu.write(CR0, 0x11)
    cpu.write(ESP, 0x9000)
    return cpu, TlbFill(cpu, native=native)


def run(cpu: Cpu, fill: TlbFill, source: str, count: int = 0) -> None:
    """Run CODE to its hlt, restarting as the monitor does when the fill hands over to the walker."""
    cpu.uc.mem_write(CODE, asm(source))
    eip = CODE
    while True:
        try:
            cpu.uc.emu_start(eip, 0, count=count)
            error = None
        except UcError as e:
            error = e
        if not fill.after_run(error):
            if error is not None:
                raise error
            return
        eip = cpu.read(EIP)


STORES = """
    mov ecx, 0x100000
again:
    mov dword ptr [0x20000], ecx
    mov dword ptr [0x20004], ecx
    push ecx
    pop eax
    dec ecx
    jnz again
    hlt
"""


@needs_native
def test_data_pages_are_not_executable_and_code_pages_are():
    cpu, fill = make_cpu(native=True)
    run(cpu, fill, STORES)
    assert fill.virtual
    assert fill.is_code_page(CODE) and not fill.is_code_page(DATA) and not fill.is_code_page(0x8000)
    assert fill.code_pages == 1


@needs_native
def test_stores_to_data_pages_run_several_times_faster_under_the_c_fill():
    # The point of the whole file: without it, every store runs Unicorn's slow helper (5-9x here).
    # CPU time, best of three, and a 2x margin: the machine is shared and noisy.
    times = {}
    for native in (False, True):
        best = None
        for _ in range(3):
            cpu, fill = make_cpu(native)
            cpu.uc.mem_write(CODE, asm(STORES))
            started = time.process_time()
            cpu.uc.emu_start(CODE, 0)
            spent = time.process_time() - started
            best = spent if best is None else min(best, spent)
        times[native] = best
    assert times[True] * 2 < times[False], times


PAGING_ON_AND_OFF = """
    mov ebx, cr0
    or ebx, 0x80000000
    mov cr0, ebx                # paging on: the C fill refuses the next fill
    mov dword ptr [0x20000], 0x1234
    mov eax, dword ptr [0x20000]
    and ebx, 0x7fffffff
    mov cr0, ebx                # paging off: the walker fills identity entries from here
    add eax, 1
    mov dword ptr [0x20004], eax
    hlt
"""


@needs_native
def test_setting_cr0_pg_hands_the_tlb_to_the_cpu_walker_and_clearing_it_hands_it_back():
    cpu, fill = make_cpu(native=True)
    cpu.uc.mem_write(CODE, asm(PAGING_ON_AND_OFF))
    with pytest.raises(UcError) as refused:
        cpu.uc.emu_start(CODE, 0)
    # The refusal is at the instruction after the CR0 write, none of it run: restartable.
    assert refused.value.errno == UC_ERR_EXCEPTION
    assert cpu.read(EIP) == CODE + len(asm("mov ebx, cr0; or ebx, 0x80000000; mov cr0, ebx"))
    assert cpu.read(CR0) & 0x80000000
    assert fill.after_run(refused.value) and not fill.virtual
    cpu.uc.emu_start(cpu.read(EIP), 0)
    assert not cpu.read(CR0) & 0x80000000
    assert fill.after_run(None) is False and fill.virtual    # paging off again: the C fill is back
    assert struct.unpack("<2I", cpu.uc.mem_read(DATA, 8)) == (0x1234, 0x1235)
    assert fill.switches == 3


@needs_native
def test_a_failure_that_is_not_the_paging_hand_over_is_left_to_the_caller():
    cpu, fill = make_cpu(native=True)
    with pytest.raises(UcError):
        run(cpu, fill, "mov eax, dword ptr [0x7ffff000]; hlt")    # outside RAM: READ_UNMAPPED
    assert fill.virtual


@needs_native
def test_a_counted_run_stops_at_the_same_instruction_under_either_fill():
    count = 0x12345                        # 1 instruction, then passes of 6: stops 2 into a pass
    states = []
    for native in (False, True):
        cpu, fill = make_cpu(native)
        run(cpu, fill, STORES, count=count)
        states.append((cpu.read(EIP), cpu.read(ECX), cpu.read(EAX), cpu.read(ESP)))
    passes, into = divmod(count - 1, 6)
    assert states[0] == states[1]
    assert states[1][:2] == (CODE + len(asm("mov ecx, 0x100000; mov dword ptr [0x20000], ecx; "
                                            "mov dword ptr [0x20004], ecx")), 0x100000 - passes)
    assert into == 2


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["c fill", "walker"])
def test_a_write_protected_page_still_reaches_its_hook_after_it_was_written_at_full_speed(native):
    cpu, fill = make_cpu(native)
    run(cpu, fill, STORES)                 # DATA's entry is dirty now: stores skip the helper
    seen = []

    def on_write(uc, access, address, size, value, _):
        seen.append((address, size, value))
        return True

    cpu.uc.mem_protect(DATA, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
    cpu.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, on_write, None, DATA, DATA + 0xFFF)
    run(cpu, fill, "mov dword ptr [0x20000], 0x77; mov dword ptr [0x20000], 0x78; hlt")
    assert seen == [(DATA, 4, 0x77), (DATA, 4, 0x78)]


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["c fill", "walker"])
def test_a_read_hook_over_a_range_sees_every_read(native):
    cpu, fill = make_cpu(native)
    seen = []
    cpu.uc.hook_add(UC_HOOK_MEM_READ, lambda uc, access, address, size, value, _: seen.append(address),
                    None, DATA, DATA + 0xFFF)
    run(cpu, fill, "mov ecx, 3; again: mov eax, dword ptr [0x20010]; mov dword ptr [0x21000], eax; "
                   "dec ecx; jnz again; hlt")
    assert seen == [DATA + 0x10] * 3


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["c fill", "walker"])
def test_a_store_into_the_next_instruction_runs_the_new_instruction(native):
    cpu, fill = make_cpu(native)
    run(cpu, fill, "mov byte ptr [0x1008], 0x42; mov eax, 0x11; hlt")   # the mov's immediate
    assert cpu.read(EAX) == 0x42


def test_without_the_c_library_the_cpu_keeps_its_walker_after_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(tlbfill, "native_fill", lambda: None)
    monkeypatch.setattr(tlbfill, "_warned", False)
    monkeypatch.delenv("HVSIM_TLB", raising=False)
    first, _ = make_cpu(native=None)[1], make_cpu(native=None)[1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "native TLB fill unavailable" in err
    assert not first.native and not first.virtual and first.after_run(None) is False


def test_hvsim_tlb_cpu_keeps_the_walker_with_the_library_present(monkeypatch, capsys):
    monkeypatch.setenv("HVSIM_TLB", "cpu")
    _, fill = make_cpu(native=None)
    assert not fill.native and not fill.virtual
    assert capsys.readouterr().err == ""


# -- whole guests under the monitor ----------------------------------------------------------------
def run_guest(name: str, technique: str, native: bool, monkeypatch):
    monkeypatch.setenv("HVSIM_TLB", "" if native else "cpu")
    domain = build_domain(build_image(GUESTS / f"{name}.S"), technique, 64, 1_000_000)
    try:
        result = domain.run()
        return result, domain.pc.tlb
    finally:
        domain.destroy()


@needs_native
def test_a_paging_guest_runs_the_same_on_either_fill_and_the_walker_takes_over(monkeypatch):
    walker, _ = run_guest("pferr", "native", False, monkeypatch)
    filled, fill = run_guest("pferr", "native", True, monkeypatch)
    assert (filled.console, filled.exit_code, filled.instructions, filled.exits) == \
           (walker.console, walker.exit_code, walker.instructions, walker.exits)
    assert filled.console == (GUESTS / "expected" / "pferr.txt").read_bytes()
    assert fill.switches >= 2 and not fill.virtual        # it never turns paging off again


@needs_native
@pytest.mark.parametrize("technique", ["native", "trap"])
def test_the_first_fetch_from_a_page_must_drop_its_user_mode_entries(technique, monkeypatch):
    # smc_datapage.S: ring 3 fills a page with data, writes two functions into it, the kernel
    # calls them, ring 3 rewrites both. Its user-mode TLB entry was made without execute and is
    # dirty: without the flush at the first fetch, the second rewrite skips QEMU's check and
    # the kernel runs the second function's old code (0x6666).
    monkeypatch.setenv("HVSIM_TLB", "")
    domain = build_domain(build_image(GUESTS / "smc_datapage.S"), technique, 64, 1_000_000)
    try:
        domain.pc.tlb._fill.flush_control = 0          # an invalid uc_ctl code: no flush
        stale = domain.run().console.decode().splitlines()[-1]
    finally:
        domain.destroy()
    assert stale == "kernel called what ring 3 wrote: 0x77776666"
    fixed, _ = run_guest("smc_datapage", technique, True, monkeypatch)
    assert fixed.console == (GUESTS / "expected" / "smc_datapage.txt").read_bytes()
