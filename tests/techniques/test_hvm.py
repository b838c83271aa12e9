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
from hypervisor.vmm.vmcs import decode_ept_violation, decode_io

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


def test_json_shows_the_vmcs_controls_in_force():
    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", str(GUESTS / "hello.S"), "-t", "hvm", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    vmcs = json.loads(done.stdout)["vmcs"]
    assert json.dumps(vmcs)                         # plain data
    text = json.dumps(vmcs)
    for control in ("hlt_exiting", "enable_ept", "external_interrupt_exiting", "use_io_bitmaps", "invlpg_exiting"):
        assert control in text


def test_without_the_c_fill_hvm_is_declined_in_one_line(monkeypatch):
    monkeypatch.setenv("HVSIM_TLB", "cpu")
    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", str(GUESTS / "hello.S"), "-t", "hvm"],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "C TLB fill" in lines[0], done.stderr
