"""The vCPU: what cpu.py finds inside Unicorn, and the library behaviour the monitor relies on.

Each test either proves a ``Cpu`` helper right against the CPU's own behaviour (an error code
QEMU computed, a shadow QEMU opened, a TR that QEMU's ``ltr`` cached), or pins a measured
Unicorn 2.1.4 behaviour that the monitor builds on (cpu.py's header lists them), so that a
library upgrade that changes one fails here first.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
from unicorn import (UC_ERR_ARG, UC_ERR_WRITE_PROT, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL,
                     UC_PROT_EXEC, UC_PROT_READ, UcError)
from unicorn import x86_const as X

from hypervisor.machine.cpu import (CR0, CR2, CR3, CR4, CS, EAX, EBX, ECX, EDI, EDX, EFLAGS, EIP, ESP, GDTR,
                                    LDTR, SS, TR, Cpu, private_layout)
from hypervisor.machine.descriptors import decode_descriptor, encode_segment, unicorn_flags

GP, NP, SS_FAULT, TS, PF, DE = 13, 11, 12, 10, 14, 0

# A small protected-mode PC: a GDT at 0x500, a TSS at 0x6000 (ss0:esp0 = 0x10:0x7000).
GDT_BASE, TSS_BASE, CODE, STUB, FRAME = 0x500, 0x6000, 0x3000, 0x1F000, 0x1E000
K_CS, K_DS, U_CS, U_DS, TSS_SEL, R1_CS, R1_DS, CALL_GATE = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x31, 0x39, 0x43
NP_CS, NP_DS, SMALL_TSS, NP_TSS, RO_DS, NP_CS3, LDT_SEL = 0x50, 0x58, 0x60, 0x68, 0x70, 0x78, 0x80
NP_DS3 = 0x88
BEYOND = 0x100                      # past the GDT limit


def gate(selector: int, offset: int, type_: int, dpl: int) -> int:
    return ((offset & 0xFFFF) | (selector << 16) | ((0x80 | dpl << 5 | type_) << 40)
            | ((offset >> 16) << 48))


GDT = [0,
       encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92),      # 0x08, 0x10
       encode_segment(0, 0xFFFFF, 0xFA), encode_segment(0, 0xFFFFF, 0xF2),      # 0x1b, 0x23
       encode_segment(TSS_BASE, 0x67, 0x89, 0),                                   # 0x28 TSS
       encode_segment(0, 0xFFFFF, 0xBA), encode_segment(0, 0xFFFFF, 0xB2),      # 0x31, 0x39 ring 1
       gate(K_CS, 0x4000, 0xC, 3),                                                # 0x43 call gate
       encode_segment(TSS_BASE + 0x100, 0x67, 0x89, 0),                           # 0x48 spare TSS
       encode_segment(0, 0xFFFFF, 0x1A), encode_segment(0, 0xFFFFF, 0x12),      # 0x50, 0x58 not present
       encode_segment(TSS_BASE + 0x200, 0x20, 0x89, 0),                           # 0x60 TSS too small
       encode_segment(TSS_BASE + 0x300, 0x67, 0x09, 0),                           # 0x68 TSS not present
       encode_segment(0, 0xFFFFF, 0x90),                                          # 0x70 read-only data
       encode_segment(0, 0xFFFFF, 0x7A),                                          # 0x78 ring-3 code, absent
       encode_segment(0x5000, 0x1F, 0x82, 0),                                     # 0x80 an LDT
       encode_segment(0, 0xFFFFF, 0x72)]                                          # 0x88 ring-3 data, absent

# Paging: identity map of the first 4 MiB; these pages break the rules.
PD, PT = 0x10000, 0x11000
SUPERVISOR_PAGE, READ_ONLY_PAGE, ABSENT_PAGE = 0x50000, 0x51000, 0x52000


def asm(source: str, address: int) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    ks.syntax = KS_OPT_SYNTAX_INTEL        # (pins keystone's radix; every number here is hex)
    return bytes(ks.asm(source, address)[0])


def make_cpu(paging: bool = False, write_protect: bool = False) -> Cpu:
    cpu = Cpu(tcg_buffer_mib=4, counting="count")     # these tests drive emu_start(count=) themselves
    uc = cpu.uc
    uc.mem_map(0, 0x400000)
    uc.mem_write(GDT_BASE, b"".join(struct.pack("<Q", e) for e in GDT))
    cpu.set_table_register(GDTR, GDT_BASE, len(GDT) * 8 - 1)
    uc.mem_write(TSS_BASE, struct.pack("<III", 0, 0x7000, K_DS) + bytes(92))
    cpu.write(CR0, 0x11)
    for reg, sel in ((CS, K_CS), (SS, K_DS), (X.UC_X86_REG_DS, K_DS), (X.UC_X86_REG_ES, K_DS)):
        cpu.write(reg, sel)
    cpu.write(ESP, 0x8000)
    if paging:
        uc.mem_write(PD, struct.pack("<I", PT | 7) + bytes(0xFFC))
        entries = [(i << 12) | 7 for i in range(0x400)]
        entries[SUPERVISOR_PAGE >> 12] = SUPERVISOR_PAGE | 3
        entries[READ_ONLY_PAGE >> 12] = READ_ONLY_PAGE | 5
        entries[ABSENT_PAGE >> 12] = 0
        uc.mem_write(PT, struct.pack("<1024I", *entries))
        cpu.write(CR3, PD)
        cpu.write(CR0, 0x80000011 | (0x10000 if write_protect else 0))
    return cpu


def start_at(cpu: Cpu, ring: int, eflags: int = 0x2) -> int:
    """Where to begin emulation so that CODE runs at ``ring``: a stub doing ltr; iretd."""
    if ring == 0:
        cpu.write(EFLAGS, eflags)
        return CODE
    cs, ss = {1: (R1_CS, R1_DS), 3: (U_CS, U_DS)}[ring]
    cpu.uc.mem_write(STUB, asm(f"mov ax, {TSS_SEL:#x}; ltr ax; mov esp, {FRAME:#x}; iretd", STUB))
    cpu.uc.mem_write(FRAME, struct.pack("<5I", CODE, cs, eflags, 0x9000, ss))
    return STUB


STUB_INSTRUCTIONS = 4


@dataclass
class Fault:
    vector: int
    error_code: int
    eip: int
    cr2: int
    error_code_in_context: int


def first_fault(source: str, ring: int = 0, paging: bool = False, write_protect: bool = False,
                setup=None) -> Fault | None:
    cpu = make_cpu(paging, write_protect)
    cpu.uc.mem_write(CODE, asm(source, CODE))
    if setup:
        setup(cpu)
    layout = private_layout()
    seen = []

    def on_fault(uc, vector, _):
        ctx = uc.context_save()
        in_context = ctypes.c_int32.from_address(ctx.context.value + layout.context_env
                                                 + layout.error_code).value
        seen.append(Fault(vector, cpu.exception_error_code(), cpu.read(EIP), cpu.read(CR2), in_context))
        uc.emu_stop()

    cpu.uc.hook_add(UC_HOOK_INTR, on_fault)
    cpu.uc.emu_start(start_at(cpu, ring), 0, count=0x40)
    return seen[0] if seen else None


# -- the error code -------------------------------------------------------------------------
SEGMENT_FAULTS = [
    # (what, code, ring, vector, error code)
    ("mov ds, selector past the GDT limit", f"mov eax, {BEYOND:#x}; mov ds, eax", 0, GP, BEYOND),
    ("mov ds, a TSS selector", "mov eax, 0x48; mov ds, eax", 0, GP, 0x48),
    ("mov ds, not present", f"mov eax, {NP_DS:#x}; mov ds, eax", 0, NP, NP_DS),
    ("mov ss, not present", f"mov eax, {NP_DS:#x}; mov ss, eax", 0, SS_FAULT, NP_DS),
    ("mov ss, read-only data", f"mov eax, {RO_DS:#x}; mov ss, eax", 0, GP, RO_DS),
    ("mov ss, code", f"mov eax, {K_CS:#x}; mov ss, eax", 0, GP, K_CS),
    ("mov ds at ring 3, ring-0 data", f"mov eax, {K_DS:#x}; mov ds, eax", 3, GP, K_DS),
    ("ltr, past the limit", f"mov eax, {BEYOND:#x}; ltr ax", 0, GP, BEYOND),
    ("ltr, a data segment", f"mov eax, {K_DS:#x}; ltr ax", 0, GP, K_DS),
    ("ltr, TSS not present", f"mov eax, {NP_TSS:#x}; ltr ax", 0, NP, NP_TSS),
    ("ltr, an LDT selector", "mov eax, 0x84; ltr ax", 0, GP, 0x84),
    ("ljmp, past the limit", f".byte 0xea; .long 0x3100; .word {BEYOND:#x}", 0, GP, BEYOND),
    ("ljmp, code not present", f".byte 0xea; .long 0x3100; .word {NP_CS:#x}", 0, NP, NP_CS),
    ("lcall, past the limit", f".byte 0x9a; .long 0x3100; .word {BEYOND:#x}", 0, GP, BEYOND),
    ("lcall, code not present", f".byte 0x9a; .long 0x3100; .word {NP_CS:#x}", 0, NP, NP_CS),
    ("ljmp to a TSS below the minimum limit", f".byte 0xea; .long 0; .word {SMALL_TSS:#x}", 0, TS, SMALL_TSS),
    ("iret, CS past the limit", f"push 0x2; push {BEYOND:#x}; push 0x3100; iretd", 0, GP, BEYOND),
    ("iret, CS not present", f"push 0x2; push {NP_CS:#x}; push 0x3100; iretd", 0, NP, NP_CS),
    ("iret to ring 3, CS not present",
     f"push {U_DS:#x}; push 0x9000; push 0x2; push {NP_CS3 | 3:#x}; push 0x3100; iretd", 0, NP, NP_CS3),
    ("iret to ring 3, SS not present (QEMU: #NP, the SDM: #SS)",
     f"push {NP_DS3 | 3:#x}; push 0x9000; push 0x2; push {U_CS:#x}; push 0x3100; iretd", 0, NP, NP_DS3),
    ("mov ss at ring 3, not present", f"mov eax, {NP_DS3 | 3:#x}; mov ss, eax", 3, SS_FAULT, NP_DS3),
    ("iret to ring 3, read-only SS",
     f"push {RO_DS:#x}; push 0x9000; push 0x2; push {U_CS:#x}; push 0x3100; iretd", 0, GP, RO_DS),
    ("int 0x30 (Unicorn checks no gate)", "int 0x30", 3, 0x30, 0),
    ("cli at ring 3", "cli", 3, GP, 0),
]


@pytest.mark.parametrize("what,source,ring,vector,error_code", SEGMENT_FAULTS,
                         ids=[case[0] for case in SEGMENT_FAULTS])
def test_exception_error_code_is_what_qemu_raised(what, source, ring, vector, error_code):
    fault = first_fault(source, ring)
    assert (fault.vector, fault.error_code) == (vector, error_code)
    assert fault.error_code_in_context == fault.error_code   # the live read is the saved field


@pytest.mark.parametrize("ss0,error_code", [(K_CS, K_CS), (K_DS | 3, K_DS), (NP_DS, NP_DS), (0, 0)])
def test_a_call_gate_through_a_bad_tss_stack_is_ts_with_the_ss_selector(ss0, error_code):
    fault = first_fault(f".byte 0x9a; .long 0; .word {CALL_GATE:#x}", ring=3,
                        setup=lambda cpu: cpu.uc.mem_write(TSS_BASE + 8, struct.pack("<I", ss0)))
    assert (fault.vector, fault.error_code, fault.eip) == (TS, error_code, CODE)


PAGE_FAULTS = [
    # (what, code, ring, CR0.WP, error code, CR2); error code bits: P=1, W/R=2, U/S=4
    ("ring 0 reads an absent page", "mov eax, dword ptr [0x52000]", 0, False, 0x0, 0x52000),
    ("ring 0 writes an absent page", "mov dword ptr [0x52004], 0x1", 0, False, 0x2, 0x52004),
    ("ring 3 reads a supervisor page", "mov eax, dword ptr [0x50008]", 3, False, 0x5, 0x50008),
    ("ring 3 writes a supervisor page", "mov dword ptr [0x5000c], 0x1", 3, False, 0x7, 0x5000C),
    ("ring 3 writes a read-only page", "mov dword ptr [0x51010], 0x1", 3, False, 0x7, 0x51010),
    ("ring 0 writes a read-only page, CR0.WP", "mov dword ptr [0x51014], 0x1", 0, True, 0x3, 0x51014),
    ("ring 3 fetches from an absent page", "mov eax, 0x52000; jmp eax", 3, False, 0x4, 0x52000),
    ("ring 3 fetches from a supervisor page", "mov eax, 0x50000; jmp eax", 3, False, 0x5, 0x50000),
]


@pytest.mark.parametrize("what,source,ring,wp,error_code,cr2", PAGE_FAULTS,
                         ids=[case[0] for case in PAGE_FAULTS])
def test_page_fault_error_code_and_cr2_are_the_hardware_values(what, source, ring, wp, error_code, cr2):
    fault = first_fault(source, ring, paging=True, write_protect=wp)
    assert (fault.vector, fault.error_code, fault.cr2) == (PF, error_code, cr2)


def test_an_exception_without_error_code_reads_zero_after_one_with():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(f"mov eax, {BEYOND:#x}; mov ds, eax; xor ecx, ecx; div ecx; nop", CODE))
    seen = []

    def on_fault(uc, vector, _):
        seen.append((vector, cpu.exception_error_code()))
        cpu.forget_fault()
        cpu.write(EIP, cpu.read(EIP) + 2)        # both faulting instructions are 2 bytes

    cpu.uc.hook_add(UC_HOOK_INTR, on_fault)
    cpu.uc.emu_start(CODE, 0, count=0x10)
    assert seen == [(GP, BEYOND), (DE, 0)]


def test_forget_fault_keeps_consecutive_faults_from_escalating_to_double_fault():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm("mov eax, 0x100; mov ds, eax; mov ds, eax; mov ds, eax; nop", CODE))
    seen = []

    def on_fault(uc, vector, _):
        seen.append(vector)
        cpu.forget_fault()
        cpu.write(EIP, cpu.read(EIP) + 2)

    cpu.uc.hook_add(UC_HOOK_INTR, on_fault)
    cpu.uc.emu_start(CODE, 0, count=0x10)
    assert seen == [GP, GP, GP]


# -- the interrupt shadow ------------------------------------------------------------------------
SHADOW_CODE = ("sti; nop; nop; mov ebx, 0x10; mov ss, ebx; nop; push 0x10; pop ss; nop; "
               "sti; sti; nop; nop")
# the shadow after each instruction of SHADOW_CODE, as QEMU keeps it
SHADOW_AFTER = [True, False, False, False, True, False, False, True, False,
                True, False, False, False]


@pytest.mark.parametrize("eflags", [0x2, 0x202], ids=["IF clear", "IF set"])
def test_interrupt_shadow_follows_sti_mov_ss_and_pop_ss_one_stop_at_a_time(eflags):
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(SHADOW_CODE, CODE))
    cpu.write(EFLAGS, eflags)
    seen = []
    eip = CODE
    for _ in SHADOW_AFTER:
        cpu.uc.emu_start(eip, 0, count=1)
        eip = cpu.read(EIP)
        seen.append(cpu.interrupt_shadow())
    assert seen == SHADOW_AFTER


@pytest.mark.parametrize("source", ["sti; mov ss, ebx; nop", "mov ss, ebx; sti; nop",
                                    "mov ss, ebx; pop ss; nop"])
def test_a_shadow_opener_inside_a_shadow_ends_it_instead(source):
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(source, CODE))
    cpu.write(EBX, K_DS)
    cpu.uc.mem_write(0x7FFC, struct.pack("<I", K_DS))
    cpu.write(ESP, 0x7FFC)
    seen = []
    eip = CODE
    for _ in range(3):
        cpu.uc.emu_start(eip, 0, count=1)
        eip = cpu.read(EIP)
        seen.append(cpu.interrupt_shadow())
    assert seen == [True, False, False]


@pytest.mark.parametrize("stop", range(1, len(SHADOW_AFTER) + 1))
def test_interrupt_shadow_is_right_where_a_count_stops_a_run(stop):
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(SHADOW_CODE, CODE))
    cpu.write(EFLAGS, 0x2)
    cpu.uc.emu_start(CODE, 0, count=stop)
    assert cpu.interrupt_shadow() == SHADOW_AFTER[stop - 1]


def test_interrupt_shadow_at_a_hook_on_the_shadowed_instruction():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm("sti; nop; nop", CODE))
    seen = []
    cpu.uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, _: seen.append(cpu.interrupt_shadow()),
                    None, CODE + 1, CODE + 2)
    cpu.uc.emu_start(CODE, 0, count=3)
    assert seen == [True, False]


def test_clear_interrupt_shadow_ends_it_and_the_next_block_is_an_ordinary_one():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm("sti; nop; nop; nop", CODE))
    cpu.write(EFLAGS, 0x2)
    cpu.uc.emu_start(CODE, 0, count=1)
    assert cpu.interrupt_shadow()
    cpu.clear_interrupt_shadow()
    assert not cpu.interrupt_shadow()
    blocks = []
    cpu.uc.hook_add(UC_HOOK_BLOCK, lambda uc, address, size, _: blocks.append((address, size)))
    cpu.uc.emu_start(CODE + 1, CODE + 4)
    assert blocks == [(CODE + 1, 3)]
    assert cpu.read(EFLAGS) & 0x200


def test_an_exception_in_the_shadowed_instruction_leaves_the_shadow_set():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(f"mov eax, {BEYOND:#x}; sti; mov ds, eax", CODE))
    seen = []

    def on_fault(uc, vector, _):
        seen.append((vector, cpu.interrupt_shadow()))
        uc.emu_stop()

    cpu.uc.hook_add(UC_HOOK_INTR, on_fault)
    cpu.uc.emu_start(CODE, 0, count=0x10)
    assert seen == [(GP, True)]      # the monitor that delivers the #GP must clear it


@pytest.mark.parametrize("ring", [0, 1, 3])
def test_cpl_is_the_privilege_level_the_cpu_checks(ring):
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, b"\x90\x90")
    begin = start_at(cpu, ring)
    cpu.uc.emu_start(begin, 0, count=(STUB_INSTRUCTIONS if ring else 0) + 1)
    assert cpu.read(EIP) == CODE + 1
    assert cpu.cpl == ring


# -- TR and LDTR: the flags format --------------------------------------------------------------
def test_tr_after_a_real_ltr_holds_qemus_flags_and_unicorn_flags_builds_them():
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(f"mov eax, {TSS_SEL:#x}; ltr ax; mov eax, {LDT_SEL:#x}; lldt ax", CODE))
    cpu.uc.emu_start(CODE, 0, count=4)
    tss = decode_descriptor(GDT[TSS_SEL >> 3])
    busy_tss = decode_descriptor(GDT[TSS_SEL >> 3] | (0x2 << 40))
    ldt = decode_descriptor(GDT[LDT_SEL >> 3])
    assert cpu.segment_register(TR) == (TSS_SEL, TSS_BASE, 0x67, 0x8900)   # cached available
    assert unicorn_flags(tss) == unicorn_flags(busy_tss) == 0x8900
    assert cpu.segment_register(LDTR) == (LDT_SEL, 0x5000, 0x1F, 0x8200) == (
        LDT_SEL, 0x5000, 0x1F, unicorn_flags(ldt))
    assert unicorn_flags(decode_descriptor(GDT[K_CS >> 3])) == 0x00C09A00


# A ring-3 lcall through a call gate to ring 0 makes QEMU fetch the ring-0 stack from TR.
CALL_GATE_SCRIPT = textwrap.dedent("""
    import struct, sys
    from tests.machine.test_cpu import *
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, asm(".byte 0x9a; .long 0x4000; .word {gate:#x}", CODE))
    cpu.uc.mem_write(0x4000, asm("mov eax, cs; nop", 0x4000))
    cpu.uc.mem_write(STUB, asm("mov esp, {frame:#x}; iretd", STUB))
    cpu.uc.mem_write(FRAME, struct.pack("<5I", CODE, U_CS, 0x2, 0x9000, U_DS))
    cpu.set_segment_register(TR, TSS_SEL, TSS_BASE, 0x67, {flags})
    cpu.uc.emu_start(STUB, 0, count=0x5)
    print(hex(cpu.read(EAX)), hex(cpu.read(ESP)), cpu.cpl)
""")


def run_call_gate_with_tr_flags(flags: str) -> subprocess.CompletedProcess:
    script = CALL_GATE_SCRIPT.format(gate=CALL_GATE, frame=FRAME, flags=flags)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_a_tr_set_by_the_monitor_with_unicorn_flags_serves_a_ring3_to_ring0_call_gate():
    flags = "unicorn_flags(decode_descriptor(encode_segment(TSS_BASE, 0x67, 0x8B, 0x0)))"  # a busy TSS
    done = run_call_gate_with_tr_flags(flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0x8", hex(0x7000 - 16), "0"]   # ring 0, on the TSS stack


@pytest.mark.parametrize("flags", ["0x8B", "0x8B00", "0x0900"], ids=["access byte", "busy", "not present"])
def test_qemu_aborts_the_process_on_a_tr_it_would_not_have_cached(flags):
    done = run_call_gate_with_tr_flags(flags)
    assert done.returncode == -6        # SIGABRT: why the monitor must never set such a TR


# -- sysenter, sysexit, syscall, sysret ------------------------------------------------------------
SYSENTER, SYSEXIT, SYSCALL, SYSRET = b"\x0f\x34", b"\x0f\x35", b"\x0f\x05", b"\x0f\x07"


@dataclass
class SysResult:
    events: list
    cs: int
    eip: int
    esp: int
    cpl: int


def run_fast_system_call(insn: bytes, ring: int, msrs: bool = True, sce: bool = False) -> SysResult:
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, insn + b"\x90" * 4)
    if msrs:
        cpu.uc.msr_write(0x174, K_CS)
        cpu.uc.msr_write(0x175, 0x7400)
        cpu.uc.msr_write(0x176, 0x4000)
    cpu.uc.msr_write(0xC0000080, 1 if sce else 0)
    cpu.uc.msr_write(0xC0000081, (U_CS << 48) | (K_CS << 32) | 0x4000)
    events = []

    def on_insn(uc, name):
        events.append((name, cpu.read(EIP)))

    def on_fault(uc, vector, _):
        events.append((f"#{vector}", cpu.read(EIP)))
        uc.emu_stop()

    def on_invalid(uc, _):
        events.append(("#UD", cpu.read(EIP)))
        uc.emu_stop()
        return True

    cpu.uc.hook_add(UC_HOOK_INSN, on_insn, "sysenter", 1, 0, X.UC_X86_INS_SYSENTER)
    cpu.uc.hook_add(UC_HOOK_INSN, on_insn, "syscall", 1, 0, X.UC_X86_INS_SYSCALL)
    cpu.uc.hook_add(UC_HOOK_INTR, on_fault)
    cpu.uc.hook_add(UC_HOOK_INSN_INVALID, on_invalid)
    cpu.write(ECX, 0x5100)
    cpu.write(EDX, 0x5200)
    begin = start_at(cpu, ring)
    cpu.uc.emu_start(begin, 0, count=(STUB_INSTRUCTIONS if ring else 0) + 1)
    return SysResult(events, cpu.read(CS), cpu.read(EIP), cpu.read(ESP), cpu.cpl)


@pytest.mark.parametrize("ring", [0, 1, 3])
@pytest.mark.parametrize("msrs", [False, True], ids=["MSRs zero", "MSRs set"])
@pytest.mark.parametrize("insn,name,sce", [(SYSENTER, "sysenter", False), (SYSCALL, "syscall", False),
                                           (SYSCALL, "syscall", True)],
                         ids=["sysenter", "syscall", "syscall SCE"])
def test_sysenter_and_syscall_only_call_their_hook_and_step_over(insn, name, sce, msrs, ring):
    result = run_fast_system_call(insn, ring, msrs, sce)
    assert result.events == [(name, CODE)]            # the hook sees EIP on the instruction
    assert (result.eip, result.cpl) == (CODE + 2, ring)   # ... and nothing else happens


@pytest.mark.parametrize("insn,hook", [(SYSENTER, X.UC_X86_INS_SYSENTER), (SYSCALL, X.UC_X86_INS_SYSCALL)],
                         ids=["sysenter", "syscall"])
def test_an_eip_written_by_a_sysenter_or_syscall_hook_gets_the_length_added(insn, hook):
    cpu = make_cpu()
    cpu.uc.mem_write(CODE, insn + b"\x90" * 4)
    cpu.uc.mem_write(0x4000, b"\x90" * 8)
    cpu.uc.hook_add(UC_HOOK_INSN, lambda uc, _: cpu.write(EIP, 0x4000), None, 1, 0, hook)
    cpu.uc.emu_start(CODE, 0, count=1)
    assert cpu.read(EIP) == 0x4002      # so a monitor writes target - 2, or sets EIP after a stop


def test_sysexit_is_qemus_own_gp_unless_cpl0_with_sysenter_cs_set():
    assert run_fast_system_call(SYSEXIT, 0, msrs=False).events == [("#13", CODE)]
    for ring in (1, 3):
        assert run_fast_system_call(SYSEXIT, ring, msrs=True).events == [("#13", CODE)]
    result = run_fast_system_call(SYSEXIT, 0, msrs=True)
    assert result.events == []
    assert (result.cs, result.eip, result.esp, result.cpl) == (U_CS, 0x5200, 0x5100, 3)


def test_sysret_is_ud_on_qemu32_whatever_efer_is_told():
    """qemu32, the CPU model every hvsim CPU has, lacks SYSCALL: a write of EFER.SCE does not
    take, and sysret is #UD at every ring, as on the referee."""
    for ring, sce in ((0, False), (0, True), (3, True)):
        assert run_fast_system_call(SYSRET, ring, sce=sce).events == [("#UD", CODE)]


@pytest.mark.parametrize("insn", [X.UC_X86_INS_SYSEXIT, X.UC_X86_INS_SYSRET], ids=["sysexit", "sysret"])
def test_sysexit_and_sysret_cannot_be_hooked(insn):
    cpu = make_cpu()
    with pytest.raises(UcError) as info:
        cpu.uc.hook_add(UC_HOOK_INSN, lambda *a: None, None, 1, 0, insn)
    assert info.value.errno == UC_ERR_ARG


# -- write-protected pages over host memory ----------------------------------------------------------
RAM, PROTECTED = 0x200000, 0x50000


class HostRam:
    """Guest RAM in a host buffer (mem_map_ptr), one page of it write-protected."""

    def __init__(self, hook=None):
        self.buffer = mmap.mmap(-1, RAM)
        self.view = memoryview(self.buffer)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self.cpu = Cpu(tcg_buffer_mib=4, counting="count")     # drives emu_start(count=) itself
        self.cpu.uc.mem_map_ptr(0, RAM, UC_PROT_ALL, self.address)
        self.cpu.uc.mem_protect(PROTECTED, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        self.stores = []
        self.cpu.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, hook or self.store_it)

    def store_it(self, uc, access, address, size, value, _):
        """The monitor's recipe: note the store, then make it happen in the frame."""
        value &= (1 << 8 * size) - 1                     # the binding passes it signed
        self.stores.append((address, size, value, self.cpu.read(EIP)))
        self.view[address:address + size] = value.to_bytes(size, "little")
        return True

    def run(self, source: str, eflags: int = 0x2) -> bytes:
        code = asm(source, CODE)
        self.cpu.uc.mem_write(CODE, code)
        self.cpu.write(EFLAGS, eflags)
        self.cpu.uc.emu_start(CODE, CODE + len(code), count=0x100)
        return code

    def dword(self, address: int) -> int:
        return struct.unpack_from("<I", self.buffer, address)[0]

    def close(self):
        self.view.release()
        self.cpu.uc.mem_unmap(0, RAM)


def test_mem_protect_splits_a_mem_map_ptr_region_over_the_same_host_memory():
    ram = HostRam()
    assert [tuple(r) for r in ram.cpu.uc.mem_regions()] == [
        (0, PROTECTED - 1, UC_PROT_ALL), (PROTECTED, PROTECTED + 0xFFF, UC_PROT_READ | UC_PROT_EXEC),
        (PROTECTED + 0x1000, RAM - 1, UC_PROT_ALL)]
    ram.view[PROTECTED - 4:PROTECTED + 0x1004] = bytes(range(0x100)) * 0x10 + b"abcdefgh"
    assert ram.cpu.uc.mem_read(PROTECTED - 4, 0x1008) == bytes(ram.view[PROTECTED - 4:PROTECTED + 0x1004])
    ram.cpu.uc.mem_write(PROTECTED + 8, b"\xde\xad")           # the monitor's writes pass
    assert ram.buffer[PROTECTED + 8:PROTECTED + 10] == b"\xde\xad"
    ram.close()


@pytest.fixture
def dropping():
    """A write-protect hook that only returns True."""
    ram = HostRam(hook=lambda uc, access, address, size, value, _: True)
    yield ram
    ram.close()


def test_returning_true_completes_the_instruction_but_drops_its_store(dropping):
    dropping.view[PROTECTED + 0x10:PROTECTED + 0x14] = struct.pack("<I", 0x7FFFFFFE)
    code = dropping.run("mov eax, 0x50010; add dword ptr [eax], 0x5")
    assert dropping.cpu.read(EIP) == CODE + len(code)
    assert dropping.cpu.read(EFLAGS) & 0x8C0 == 0x880         # OF and SF of 0x7ffffffe + 5, ZF clear
    assert dropping.dword(PROTECTED + 0x10) == 0x7FFFFFFE      # ... but no store
    dropping.run("mov esp, 0x50020; push 0x12345678")
    assert (dropping.cpu.read(ESP), dropping.dword(PROTECTED + 0x1C)) == (PROTECTED + 0x1C, 0)
    dropping.run("cld; mov edi, 0x4fff8; mov ecx, 0x4; mov eax, 0xabcdef01; "
                 "rep stosd dword ptr es:[edi], eax")
    assert (dropping.cpu.read(ECX), dropping.cpu.read(EDI)) == (0, PROTECTED + 8)
    assert [dropping.dword(a) for a in range(PROTECTED - 8, PROTECTED + 8, 4)] == [0xABCDEF01] * 2 + [0, 0]


def test_storing_the_value_from_the_hook_gives_the_full_instruction():
    ram = HostRam()
    ram.view[PROTECTED + 0x10:PROTECTED + 0x14] = struct.pack("<I", 0x7FFFFFFE)
    ram.run("mov eax, 0x50010; add dword ptr [eax], 0x5")
    assert ram.dword(PROTECTED + 0x10) == 0x80000003
    assert ram.stores == [(PROTECTED + 0x10, 4, 0x80000003, CODE + 5)]    # EIP on the instruction
    assert ram.cpu.read(EFLAGS) & 0x8C0 == 0x880
    ram.run("mov esp, 0x50020; push 0x12345678")
    assert (ram.cpu.read(ESP), ram.dword(PROTECTED + 0x1C)) == (PROTECTED + 0x1C, 0x12345678)
    ram.stores.clear()
    ram.run("cld; mov edi, 0x4fff8; mov ecx, 0x4; mov eax, 0xabcdef01; rep stosd dword ptr es:[edi], eax")
    assert [a for a, *_ in ram.stores] == [PROTECTED, PROTECTED + 4]     # one call per store
    assert [ram.dword(a) for a in range(PROTECTED - 8, PROTECTED + 8, 4)] == [0xABCDEF01] * 4
    ram.stores.clear()
    ram.cpu.write(CR4, 1 << 9)                  # CR4.OSFXSR: qemu32 starts with CR4 = 0, SSE off
    ram.run("mov eax, 0x50020; pcmpeqd xmm0, xmm0; movdqu xmmword ptr [eax], xmm0")
    assert [(a, s, v) for a, s, v, _ in ram.stores] == [(PROTECTED + 0x20, 8, 2**64 - 1),
                                                        (PROTECTED + 0x28, 8, 2**64 - 1)]
    ram.stores.clear()
    ram.run("mov ebx, 0x50030; mov ecx, 0x99; xchg dword ptr [ebx], ecx")
    assert ram.stores[0][:3] == (PROTECTED + 0x30, 4, 0x99)
    ram.close()


def test_a_hooked_store_lands_where_mem_map_ptr_gave_read_only_and_not_where_mem_protect_did():
    buffer = mmap.mmap(-1, 0x2000)
    cpu = Cpu(tcg_buffer_mib=4, counting="count")     # drives emu_start(count=) itself
    cpu.uc.mem_map(0, 0x10000)
    cpu.uc.mem_map_ptr(0x50000, 0x2000, UC_PROT_READ | UC_PROT_EXEC,
                       ctypes.addressof(ctypes.c_char.from_buffer(buffer)))
    cpu.uc.mem_protect(0x51000, 0x1000, UC_PROT_READ)
    cpu.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, lambda uc, access, address, size, value, _: True)
    code = asm("mov dword ptr [0x50010], 0x12345678; mov dword ptr [0x51010], 0x12345678", CODE)
    cpu.uc.mem_write(CODE, code)
    cpu.uc.emu_start(CODE, CODE + len(code))
    assert struct.unpack_from("<I", buffer, 0x10)[0] == 0x12345678       # mapped read-only: stored
    assert struct.unpack_from("<I", buffer, 0x1010)[0] == 0              # protected later: dropped
    cpu.uc.mem_unmap(0x50000, 0x2000)


def test_returning_false_stops_with_write_prot_before_any_of_the_instruction():
    ram = HostRam(hook=lambda uc, access, address, size, value, _: False)
    with pytest.raises(UcError) as info:
        ram.run("mov esp, 0x50020; push 0x12345678")
    assert info.value.errno == UC_ERR_WRITE_PROT
    assert (ram.cpu.read(EIP), ram.cpu.read(ESP)) == (CODE + 5, PROTECTED + 0x20)
    with pytest.raises(UcError):
        ram.run("cld; mov edi, 0x4fff8; mov ecx, 0x4; mov eax, 0xabcdef01; rep stosd dword ptr es:[edi], eax")
    assert (ram.cpu.read(ECX), ram.cpu.read(EDI)) == (2, PROTECTED)     # restartable mid-rep
    ram.close()


def test_the_page_walker_cannot_set_accessed_or_dirty_bits_in_a_protected_page():
    ram = HostRam()
    page_table = PROTECTED
    ram.view[PD:PD + 4] = struct.pack("<I", page_table | 7)
    ram.view[page_table:page_table + 0x800] = struct.pack("<512I", *((i << 12) | 7 for i in range(0x200)))
    ram.cpu.write(CR3, PD)
    ram.cpu.write(CR0, 0x80000011)
    ram.run("mov eax, dword ptr [0x60000]; mov dword ptr [0x61000], eax")
    assert [ram.dword(page_table + 4 * (a >> 12)) for a in (0x60000, 0x61000, CODE)] == [
        0x60007, 0x61007, CODE | 7]                               # no A, no D, and no hook call
    assert ram.stores == []
    assert ram.dword(PD) == page_table | 0x27                    # (an unprotected PDE gets its A bit)
    ram.close()


# -- blocks --------------------------------------------------------------------------------------
def test_emu_stop_in_a_block_hook_stops_before_the_block_runs():
    cpu = make_cpu()
    code = asm("mov eax, 0x1; jmp l2; l2: inc eax; inc eax; nop", CODE)
    cpu.uc.mem_write(CODE, code)
    blocks = []

    def on_block(uc, address, size, _):
        blocks.append(address)
        if len(blocks) == 2:
            uc.emu_stop()

    cpu.uc.hook_add(UC_HOOK_BLOCK, on_block)
    cpu.uc.emu_start(CODE, CODE + len(code))
    assert (cpu.read(EIP), cpu.read(EAX)) == (blocks[1], 1)


def test_sti_mov_ss_and_pop_ss_end_a_block_and_the_shadowed_instruction_is_one_alone():
    cpu = make_cpu()
    code = asm("mov ebx, 0x10; sti; nop; cli; inc eax; mov ss, ebx; nop; inc eax; push 0x10; pop ss; "
               "nop; inc eax; nop", CODE)
    cpu.uc.mem_write(CODE, code)
    blocks = []
    cpu.uc.hook_add(UC_HOOK_BLOCK, lambda uc, address, size, _: blocks.append((address - CODE, size)))
    cpu.uc.emu_start(CODE, CODE + len(code))
    assert blocks == [(0x0, 6), (0x6, 1), (0x7, 4), (0xB, 1), (0xC, 5), (0x11, 1), (0x12, 2)]


def test_eflags_address_is_where_the_live_cpu_keeps_if_and_iopl():
    cpu = Cpu()
    word = ctypes.c_uint32.from_address(cpu.eflags_address)
    for value in (0x2, 0x202, 0x3202, 0x2002):
        cpu.write(EFLAGS, value)
        assert word.value & 0x3200 == value & 0x3200


def test_eip_in_a_port_io_hook_is_the_instruction_even_without_count():
    # Why the project pins Unicorn 2.1.4 (README, "Which Unicorn, and why"): 2.1.2 and 2.1.3 show
    # the *block's* start here unless emu_start(count=) syncs EIP before every instruction, and
    # without count= (block counting) the monitor could then neither count nor decode an I/O exit.
    cpu = make_cpu()
    code = asm("xor eax, eax; nop; out 0xf4, al; mov ecx, dword ptr [0x2000]; out 0xf5, al; hlt", CODE)
    cpu.uc.mem_write(CODE, code)
    seen = []
    cpu.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, _: seen.append((port, cpu.read(EIP) - CODE)),
                    None, 1, 0, X.UC_X86_INS_OUT)
    cpu.uc.emu_start(CODE, CODE + len(code))
    assert seen == [(0xF4, 3), (0xF5, 11)]
