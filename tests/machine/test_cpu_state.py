"""The CPU's state read and written directly: segment caches, table registers, batches, ring changes.

``Cpu`` reads QEMU's SegmentCache structures and the descriptor-table registers straight from
the CPU state (found by ``segment_layout``'s probe), batches register access, and changes the
CPL the way a far transfer does (``load_ring``: the CPL first, then SS and CS), with
``drop_segments_above`` doing iret's nulling of segments the outer ring may not use. Each is
checked here against what Unicorn's own register interface says, or against an iret that the
CPU itself executes.
"""
from __future__ import annotations

import ctypes
import struct

import pytest
from unicorn import UC_HOOK_INTR

from hypervisor.machine.cpu import (CS, DS, EAX, EBX, EIP, ES, ESP, FS, GDTR, GS, IDTR, LDTR, SS, TR, Cpu,
                                    segment_layout)
from tests.machine.test_cpu import CODE, K_CS, K_DS, R1_CS, R1_DS, TSS_BASE, U_CS, U_DS, asm, make_cpu


def test_the_segment_caches_follow_qemus_order():
    layout = segment_layout()
    assert (layout.ldt, layout.tr, layout.gdt, layout.idt) == tuple(layout.segs + 24 * i for i in range(6, 10))


@pytest.mark.parametrize("reg", [GDTR, IDTR])
def test_a_table_register_reads_and_writes_as_unicorn_sees_it(reg):
    cpu = Cpu(tcg_buffer_mib=4)
    cpu.set_table_register(reg, 0x12345678, 0x3FF)
    assert cpu.table_register(reg) == (0x12345678, 0x3FF)
    _, base, limit, _ = cpu.uc.reg_read(reg)
    assert (base, limit) == (0x12345678, 0x3FF)
    cpu.uc.reg_write(reg, (0, 0x1000, 0x27, 0))
    assert cpu.table_register(reg) == (0x1000, 0x27)


@pytest.mark.parametrize("reg", [TR, LDTR])
def test_tr_and_ldtr_read_as_unicorn_reports_them(reg):
    cpu = Cpu(tcg_buffer_mib=4)
    cpu.set_segment_register(reg, 0x28, 0x5000, 0x67, 0x8900)
    assert cpu.segment_register(reg) == tuple(cpu.uc.reg_read(reg)) == (0x28, 0x5000, 0x67, 0x8900)


def test_a_data_segment_cache_holds_the_loaded_descriptor():
    cpu = make_cpu()
    selector, base, limit, flags = cpu.segment_register(DS)
    assert (selector, base, limit) == (K_DS, 0, 0xFFFFFFFF)
    assert (flags >> 13) & 3 == 0 and flags & (1 << 15)          # DPL 0, present


def test_batches_read_and_write_what_single_accesses_do():
    cpu = make_cpu()
    regs = (EAX, EBX, ESP, CS, SS)
    assert cpu.write_batch(regs[:3], (0x11111111, 0xFFFFFFFF, 0x7000))
    assert cpu.read_batch(regs) == [cpu.read(r) for r in regs] == [0x11111111, 0xFFFFFFFF, 0x7000, K_CS, K_DS]


def test_a_refused_selector_stops_the_write_batch_there():
    cpu = make_cpu()
    assert not cpu.write_batch((EAX, SS, EBX), (1, 0x1234, 2))
    assert (cpu.read(EAX), cpu.read(SS), cpu.read(EBX)) == (1, K_DS, 0)


def test_state_addresses_point_at_cs_base_ss_base_and_esp():
    cpu = make_cpu()
    cpu.write(ESP, 0x6543)
    cs_base, ss_base, esp = (ctypes.c_uint64.from_address(a).value for a in cpu.state_addresses())
    assert (cs_base, ss_base, esp & 0xFFFFFFFF) == (0, 0, 0x6543)


@pytest.mark.parametrize("ring, cs, ss", [(3, U_CS, U_DS), (1, R1_CS, R1_DS)])
def test_load_ring_goes_out_and_back_in_without_the_cpu_running(ring, cs, ss):
    cpu = make_cpu()
    assert cpu.load_ring(ring, cs, ss, 0x9000, 0x202, CODE)
    assert (cpu.cpl, cpu.read(CS), cpu.read(SS), cpu.read(ESP), cpu.read(EIP)) == (ring, cs, ss, 0x9000, CODE)
    assert cpu.load_ring(0, K_CS, K_DS, 0x8000, 0x2, CODE)
    assert (cpu.cpl, cpu.read(CS), cpu.read(SS)) == (0, K_CS, K_DS)


def test_load_ring_into_ring_3_runs_ring_3_code_that_then_faults_at_ring_3():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm("cli", CODE))              # #GP at CPL 3
    assert cpu.load_ring(3, U_CS, U_DS, 0x9000, 0x2, CODE)
    seen = []
    cpu.uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _: (seen.append((intno, cpu.cpl)), uc.emu_stop()))
    cpu.run(CODE, 1 << 40, 5)
    assert seen == [(13, 3)]


def test_a_refused_load_ring_leaves_the_cpl_alone():
    cpu = make_cpu()
    assert not cpu.load_ring(3, U_CS, 0x1234, 0x9000, 0x2, CODE)
    assert cpu.cpl == 0


@pytest.mark.parametrize("selectors, kept", [
    ((K_DS, K_DS, 0, 0), (0, 0, 0, 0)),                  # ring-0 data: nulled going to ring 3
    ((U_DS, U_DS, U_DS, U_DS), (U_DS, U_DS, U_DS, U_DS)),  # ring-3 data: kept
    ((U_DS, K_DS, U_DS, K_DS), (U_DS, 0, U_DS, 0)),
])
def test_drop_segments_above_nulls_what_iret_to_ring_3_would(selectors, kept):
    """The same returns done by the CPU's own iretd agree with load_ring + drop_segments_above."""
    data = (DS, ES, FS, GS)

    def prepared() -> Cpu:
        cpu = make_cpu()
        cpu.uc.mem_write(TSS_BASE, struct.pack("<III", 0, 0x7000, K_DS) + bytes(92))
        for reg, selector in zip(data, selectors):
            cpu.write(reg, selector)
        return cpu

    by_cpu = prepared()
    by_cpu.uc.mem_write(CODE, asm("iretd", CODE))
    by_cpu.uc.mem_write(0x8000, struct.pack("<5I", CODE + 0x100, U_CS, 0x2, 0x9000, U_DS))
    by_cpu.write(ESP, 0x8000)
    by_cpu.run(CODE, CODE + 0x100, 1)
    by_monitor = prepared()
    assert by_monitor.load_ring(3, U_CS, U_DS, 0x9000, 0x2, CODE + 0x100)
    by_monitor.drop_segments_above(3)
    assert tuple(by_cpu.read(r) for r in data) == tuple(by_monitor.read(r) for r in data) == kept


def test_a_ring_change_by_the_monitor_keeps_the_tlb():
    """enter_ring0 and load_ring change the CPL in hflags, not by toggling CR0.PE, which would
    flush Unicorn's TLB on every exit: a stale translation (a PTE changed without invlpg)
    survives them, as it survives a real interrupt."""
    from tests.machine.test_cpu import PT
    cpu = make_cpu(paging=True)
    page = 0x60000
    cpu.uc.mem_write(page, struct.pack("<I", 0x1111))
    cpu.uc.mem_write(page + 0x1000, struct.pack("<I", 0x2222))
    cpu.uc.mem_write(CODE, asm(f"mov eax, dword ptr [{page:#x}]; hlt", CODE))
    cpu.run(CODE, 1 << 40, 2)
    assert cpu.read(EAX) == 0x1111
    # Point the page at the next frame behind the TLB's back.
    cpu.uc.mem_write(PT + 4 * (page >> 12), struct.pack("<I", (page + 0x1000) | 7))
    assert cpu.load_ring(3, U_CS, U_DS, 0x9000, 0x2, CODE)
    cpu.enter_ring0(K_CS, K_DS)
    cpu.write(EAX, 0)
    cpu.run(CODE, 1 << 40, 2)
    assert cpu.read(EAX) == 0x1111          # the stale entry: no flush happened


def test_eip_and_esp_read_in_place_are_what_unicorn_reports():
    cpu = make_cpu()
    cpu.write(EIP, 0x12345678)
    cpu.write(ESP, 0x0BADF00D)
    assert (cpu.eip, cpu.esp) == (cpu.read(EIP), cpu.read(ESP)) == (0x12345678, 0x0BADF00D)


def test_unicorns_exit_check_after_every_memory_access_is_found_and_turned_off_for_block_counting():
    """2.1.4 calls helper_check_exit_request after every guest load and store; with block
    counting nothing needs it (the block hook takes every stop), ``count=`` does."""
    from hypervisor.machine.cpu import exit_request_flag
    flag = exit_request_flag()
    assert flag is not None, "the pinned Unicorn's check_exit_request was not recognised"

    def no_exit_request(cpu: Cpu) -> int:
        return ctypes.c_uint8.from_address(cpu.uc._uch.value + flag).value

    block = Cpu(tcg_buffer_mib=4, counting="block")
    count = Cpu(tcg_buffer_mib=4, counting="count")
    assert (block.counting, no_exit_request(block)) == ("block", 1)
    assert (count.counting, no_exit_request(count)) == ("count", 0)
    block.count_every_instruction()
    assert no_exit_request(block) == 0


def test_nmi_blocking_lives_in_hflags2_and_the_cpus_own_iret_clears_it():
    """QEMU keeps "NMIs blocked until the next iret" in env->hflags2; a monitor that delivers an
    NMI sets it, and a guest iret run by the CPU itself must clear it."""
    from tests.machine.native.test_blockhook import BASE, UNTIL_NEVER, ring0_cpu
    cpu = ring0_cpu(b"\xcf" + b"\x90" * 15 + b"\xf4")          # iretd to BASE + 0x10: hlt
    cpu.uc.mem_write(0x8FF4, struct.pack("<III", BASE + 0x10, 0x08, 0x2))
    cpu.write(ESP, 0x8FF4)
    assert not cpu.nmi_blocked
    cpu.nmi_blocked = True
    assert cpu.nmi_blocked
    cpu.run(BASE, UNTIL_NEVER, 100)
    assert cpu.read(EIP) == BASE + 0x11 and not cpu.nmi_blocked


def test_the_budget_of_a_counted_run_lies_right_after_its_counter():
    """Cpu.stop lowers emu_count from a memory access's callback (count= mode): it must be the
    word after emu_counter, holding the count the run was given."""
    cpu = Cpu(tcg_buffer_mib=4, counting="count")
    cpu.uc.mem_map(0, 0x10000)
    cpu.uc.mem_write(0x1000, b"\x40\xeb\xfd")          # l: inc eax; jmp l
    cpu.uc.emu_start(0x1000, 0, count=777)
    assert cpu._emu_count.value == 777
