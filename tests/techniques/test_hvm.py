"""hvm: each kind of VM exit, with the SDM's basic reason number and qualification layout.

The guests are small kernels written here (the runtime's ``_start`` is not needed: each sets up
what it uses); their behaviour against the bare machine is the conformance tests' business.
Here the question is what the monitor saw: which exits, numbered and qualified as VT-x would.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from hypervisor.image import build_image
from hypervisor.session import build_domain, run_image
from hypervisor.vmm.vmcs import CrAccess, decode_cr_access, decode_ept_violation, decode_io

GUESTS = Path(__file__).resolve().parents[2] / "guests"
EXIT = "mov al, 0\n out 0xf4, al\n"


def guest(tmp_path, body: str) -> bytes:
    src = tmp_path / "g.S"
    src.write_text(textwrap.dedent("_start:\n" + body))
    return build_image(src)


def records(result, reason: str) -> list[dict]:
    return [r for r in result.trace if r["reason"] == reason]


def qualification(record: dict) -> int:
    return int(record["qualification"].split()[0].split("=")[1], 16)


def test_cpuid_always_exits(tmp_path):
    result = run_image(guest(tmp_path, "xor eax, eax\n cpuid\n" + EXIT), technique="hvm", keep_trace=True)
    [cpuid] = records(result, "cpuid")
    assert cpuid["reason_code"] == 10 and result.exits["cpuid"] == 1


def test_hlt_exits(tmp_path):
    result = run_image(guest(tmp_path, "mov al, 0xff\n out 0x21, al\n out 0xa1, al\n sti\n hlt\n"),
                       technique="hvm", keep_trace=True)
    assert records(result, "hlt")[0]["reason_code"] == 12


def test_io_exits_carry_the_sdm_qualification(tmp_path):
    result = run_image(guest(tmp_path, "mov al, 0x41\n out 0x80, al\n mov dx, 0x3fd\n in al, dx\n" + EXIT),
                       technique="hvm", keep_trace=True)
    out80, in3fd = records(result, "io_instruction")[:2]
    assert qualification(out80) == (0x80 << 16) | (1 << 6)          # 1 byte, out, immediate port
    q = decode_io(qualification(in3fd))
    assert (q.port, q.size, q.direction_in, q.immediate, q.string) == (0x3FD, 1, True, False, False)
    assert out80["reason_code"] == 30


def test_mmio_is_an_ept_violation_with_its_access_bits(tmp_path):
    result = run_image(guest(tmp_path, "mov eax, dword ptr [0xfee00030]\n" + EXIT), technique="hvm",
                       keep_trace=True)
    [apic] = records(result, "ept_violation")
    assert apic["reason_code"] == 48
    q = decode_ept_violation(qualification(apic))
    assert q.read and not q.write and not q.fetch and q.linear_valid and q.linear_is_translation
    assert "gpa=0xfee00030" in apic["qualification"]


PAGING = """
    mov edi, 0x200000
    mov eax, 0x83                   # 4 MiB pages, identity, present and writable
    mov ecx, 4
pd: mov dword ptr [edi], eax
    add eax, 0x400000
    add edi, 4
    dec ecx
    jnz pd
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, 0x200000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


def test_invlpg_exits_with_the_linear_address(tmp_path):
    result = run_image(guest(tmp_path, PAGING + "mov ebx, 0x345678\n invlpg [ebx]\n" + EXIT), technique="hvm",
                       keep_trace=True)
    [invlpg] = records(result, "invlpg")
    assert invlpg["reason_code"] == 14 and qualification(invlpg) == 0x345678


def test_a_task_switch_exits_with_the_tss_selector_and_its_source():
    result = run_image(GUESTS / "taskgate_call.S", technique="hvm", keep_trace=True)
    switches = records(result, "task_switch")
    assert switches and all(s["reason_code"] == 9 for s in switches)
    sources = {qualification(s) >> 30 for s in switches}
    assert sources == {0, 1, 2}                       # call, iret and jmp all appear in that guest


def test_external_interrupts_exit_and_guest_exceptions_do_not():
    timer = run_image(GUESTS / "timer.S", technique="hvm")
    assert timer.exits["external_interrupt"] == 5
    assert timer.details["vm_entries_with_injection"] == 5        # each went in by VM-entry injection
    faults = run_image(GUESTS / "exceptions.S", technique="hvm")
    # #DE, #BP, #UD, #GP, #NP and int 0x80: delivered by the (virtual) CPU through the guest's
    # IDT; the exception bitmap holds only #MC.
    assert "exception_nmi" not in faults.exits


def test_guest_memory_outside_its_ept_is_an_ept_violation_that_ends_the_run(tmp_path):
    result = run_image(guest(tmp_path, "mov eax, dword ptr [0xe0000000]\n" + EXIT), technique="hvm",
                       keep_trace=True)
    assert result.halted_reason.startswith("guest crash: EPT violation")
    [violation] = records(result, "ept_violation")
    q = decode_ept_violation(qualification(violation))
    assert q.read and not (q.readable or q.writable or q.executable)


def test_dirty_logging_reports_the_pages_written(tmp_path):
    body = "mov dword ptr [0x300000], 1\n mov dword ptr [0x305004], 2\n mov eax, [0x306000]\n" + EXIT
    domain = build_domain(guest(tmp_path, body), technique="hvm")
    try:
        hvm = domain.monitor
        hvm.ept.start_dirty_log()                   # before the guest runs a single instruction
        result = domain.run()
        dirty = hvm.ept.take_dirty()
    finally:
        domain.destroy()
    assert result.exit_code == 0
    assert {0x300, 0x305} <= set(dirty) and 0x306 not in dirty
    assert result.exits["ept_violation"] >= 2


def test_after_the_dirty_log_stops_writes_exit_no_more(tmp_path):
    body = "mov dword ptr [0x300000], 1\n mov dword ptr [0x305004], 2\n" + EXIT
    domain = build_domain(guest(tmp_path, body), technique="hvm")
    try:
        domain.monitor.ept.start_dirty_log()
        domain.monitor.ept.stop_dirty_log()
        result = domain.run()
    finally:
        domain.destroy()
    assert result.exit_code == 0 and "ept_violation" not in result.exits


def test_a_ram_page_taken_out_of_the_ept_is_out_of_the_guests_reach(tmp_path):
    domain = build_domain(guest(tmp_path, "mov eax, dword ptr [0x300010]\n" + EXIT), technique="hvm",
                          trace=None)
    try:
        domain.monitor.ept.unmap(0x300)
        result = domain.run()
    finally:
        domain.destroy()
    assert result.halted_reason.startswith("guest crash: EPT violation: read from gpa 0x300010"), result.halted_reason


def test_a_cr0_write_that_changes_a_host_owned_bit_exits_with_its_cr_and_register(tmp_path):
    body = "mov ebx, cr0\n or ebx, 0x20\n mov cr0, ebx\n mov eax, cr0\n" + EXIT     # CR0.NE: the host's
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    [write] = records(result, "cr_access")
    q = decode_cr_access(qualification(write))
    assert write["reason_code"] == 28 and write["insn_text"] == "mov cr0, ebx"
    assert (q.cr, q.access, q.gpr) == (0, CrAccess.MOV_TO_CR, 3)         # 3: EBX
    assert result.exit_code == 0 and result.exits["cr_access"] == 1     # the read of CR0 did not exit


def test_writes_to_guest_owned_bits_do_not_exit(tmp_path):
    body = ("mov eax, cr0\n or eax, 0x10008\n mov cr0, eax\n clts\n"          # CR0.WP and TS; clts
            "mov ecx, cr4\n or ecx, 0x680\n mov cr4, ecx\n" + EXIT)             # CR4.PGE, OSFXSR, OSXMMEXCPT
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    assert result.exit_code == 0 and "cr_access" not in result.exits


def test_a_cr4_write_exits_with_its_cr_and_register(tmp_path):
    body = "mov edx, cr4\n or edx, 0x10\n mov cr4, edx\n" + EXIT                 # CR4.PSE: the host's
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    [write] = records(result, "cr_access")
    q = decode_cr_access(qualification(write))
    assert (q.cr, q.access, q.gpr) == (4, CrAccess.MOV_TO_CR, 2)         # 2: EDX
    assert result.details["vmcs"]["cr4_read_shadow"] == "0x00000010"    # what the guest wrote


def test_lmsw_exits_with_its_source_data_and_operand_type(tmp_path):
    body = ("mov ax, 0x3\n lmsw ax\n"                                           # sets CR0.MP: the host's
            "mov word ptr [0x300000], 0x7\n mov ebx, 0x300000\n lmsw word ptr [ebx]\n" + EXIT)   # and EM
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    register, memory = records(result, "cr_access")
    q = decode_cr_access(qualification(register))
    assert (q.cr, q.access, q.lmsw_source, q.lmsw_memory) == (0, CrAccess.LMSW, 0x3, False)
    q = decode_cr_access(qualification(memory))
    assert (q.access, q.lmsw_source, q.lmsw_memory) == (CrAccess.LMSW, 0x7, True)
    assert "memory at 0x300000" in memory["qualification"]


def test_cr3_loads_exit_only_when_the_vmcs_asks(tmp_path):
    image = guest(tmp_path, "mov eax, 0x200000\n mov cr3, eax\n mov esi, cr3\n" + EXIT)
    assert "cr_access" not in run_image(image, technique="hvm").exits          # EPT: KVM leaves them off
    domain = build_domain(image, technique="hvm")
    try:
        controls = domain.monitor.vmcs.controls
        controls.cr3_load_exiting = controls.cr3_store_exiting = True           # before the guest runs
        result = domain.run()
        info = domain.monitor.vmcs.exit_info
    finally:
        domain.destroy()
    q = decode_cr_access(info.qualification)                                    # the last: the store
    assert (q.cr, q.access, q.gpr) == (3, CrAccess.MOV_FROM_CR, 6)              # 6: ESI
    assert result.exits["cr_access"] == 2


def test_rdmsr_exits_for_an_intercepted_msr_and_not_for_a_passed_one(tmp_path):
    # All in one translated block: QEMU does not end its block after rdmsr, so the exit of the
    # second must not pass unseen with the first.
    body = "mov ecx, 0x174\n rdmsr\n mov ecx, 0x1b\n rdmsr\n mov ecx, 0x10\n rdmsr\n" + EXIT
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    [apic_base] = records(result, "rdmsr")
    assert apic_base["reason_code"] == 31 and "MSR 0x1b" in apic_base["qualification"]
    assert result.exits["rdmsr"] == 1 and result.exit_code == 0


def test_wrmsr_exits_for_an_intercepted_msr_and_the_write_takes_effect(tmp_path):
    body = ("xor edx, edx\n mov eax, 0x123000\n mov ecx, 0x176\n wrmsr\n"        # SYSENTER_EIP: passed
            "mov edx, 0x70406\n mov eax, 0x70406\n mov ecx, 0x277\n wrmsr\n"    # IA32_PAT: intercepted
            "xor eax, eax\n rdmsr\n cmp eax, 0x70406\n jne bad\n" + EXIT +
            "bad: mov al, 1\n out 0xf4, al\n")
    result = run_image(guest(tmp_path, body), technique="hvm", keep_trace=True)
    [pat] = records(result, "wrmsr")
    assert pat["reason_code"] == 32 and "MSR 0x277" in pat["qualification"]
    assert result.exits["wrmsr"] == 1 and result.exits["rdmsr"] == 1 and result.exit_code == 0


def test_cr_and_msr_accesses_at_cpl3_fault_before_any_exit():
    result = run_image(GUESTS / "hvm_privileged.S", technique="hvm")
    assert result.console == (GUESTS / "expected" / "hvm_privileged.txt").read_bytes()
    # Ring 0's mov to CR0 (NE), mov to CR4 (PSE), lmsw (MP), and IA32_PAT's write and read; none
    # of the seven #GPs at ring 3, nor the SYSENTER_ESP accesses the bitmaps pass through.
    assert {r: result.exits.get(r) for r in ("cr_access", "rdmsr", "wrmsr")} == {"cr_access": 3, "rdmsr": 1,
                                                                                 "wrmsr": 1}


def test_a_paging_guest_prints_what_it_printed_with_its_cr_writes_exiting():
    result = run_image(GUESTS / "paging_basic.S", technique="hvm")
    assert result.console == (GUESTS / "expected" / "paging_basic.txt").read_bytes()
    assert result.exits["cr_access"] >= 1                               # CR0.PG is the host's


def test_json_shows_the_vmcs_controls_in_force():
    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", str(GUESTS / "hello.S"), "-t", "hvm", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    vmcs = json.loads(done.stdout)["vmcs"]
    assert json.dumps(vmcs)                         # plain data
    text = json.dumps(vmcs)
    for control in ("hlt_exiting", "enable_ept", "external_interrupt_exiting", "use_io_bitmaps", "invlpg_exiting"):
        assert control in text
    # KVM's choice for an EPT guest: CR0.TS and WP the guest's, and six CR4 bits.
    assert (vmcs["cr0_guest_host_mask"], vmcs["cr4_guest_host_mask"]) == ("0xfffefff7", "0xfffff873")
    assert vmcs["cr0_read_shadow"] == "0x00000011"                      # PE and ET: multiboot's CR0
    assert vmcs["primary"]["cr3_load_exiting"] is False and vmcs["primary"]["use_msr_bitmaps"] is True
    assert [0x174, 0x176] not in vmcs["msr_reads_exiting"] and [0x10, 0x10] not in vmcs["msr_writes_exiting"]
    assert vmcs["msr_reads_exiting"][:2] == [[0x0, 0xF], [0x11, 0x173]]  # the TSC and SYSENTER's three are read freely


def test_without_the_c_fill_hvm_is_declined_in_one_line(monkeypatch):
    monkeypatch.setenv("HVSIM_TLB", "cpu")
    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", str(GUESTS / "hello.S"), "-t", "hvm"],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "C TLB fill" in lines[0], done.stderr
