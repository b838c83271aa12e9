"""The one exit path: a slice, an Exit, the handler the table names, then resume or inject.

Most tests boot a small guest (runtime.S plus a ``main``) under each technique on an in-process
PC, sometimes with one handler of the monitor's table replaced, and sometimes with a test device
on port 0xed whose write does what a hook does: stop the slice, with or without an exit.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hypervisor.image import build_image
from hypervisor.image.multiboot import parse_kernel
from hypervisor.machine.cpu import EBX, EIP
from hypervisor.machine.devices.pit import ns_for_ticks
from hypervisor.machine.faults import BusError, GuestFault
from hypervisor.machine.interrupts import UD
from hypervisor.machine.memory import MachineMemory
from hypervisor.machine.pc import PC
from hypervisor.techniques import TECHNIQUES
from hypervisor.vmm.exits import Exit, ExitReason
from hypervisor.vmm.monitor import IDLE_LIMIT, Monitor, VcpuState

RUNTIME = Path(__file__).resolve().parents[2] / "guests" / "runtime.S"
RAM = 4 << 20
BOTH = pytest.mark.parametrize("technique", ["native", "trap"])
TEST_PORT = 0xED

# The PIC as every test guest programs it: vectors 0x20/0x28, then a mask.
PIC_INIT = """
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0x21, al
    out 0xa1, al
    mov al, {mask}
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
"""


def gate(vector: int, handler: str, kind: str = "0x8e") -> str:
    return f"    mov eax, {vector:#x}\n    mov ebx, {handler}\n    mov cl, {kind}\n    call idt_set_gate\n"


class PortDevice:
    """Port 0xed: a write runs ``on_write`` (a hook's action) inside the port hook."""

    def __init__(self, on_write):
        self.on_write = on_write

    def read(self, port: int, size: int) -> int:
        return 0

    def write(self, port: int, size: int, value: int) -> None:
        self.on_write()


def boot(tmp_path, technique: str, main: str, max_instructions: int = 50_000_000, bare: bool = False) -> Monitor:
    source = tmp_path / "guest.S"
    text = textwrap.dedent(main) if bare else textwrap.dedent(main) + f'\n.include "{RUNTIME}"\n'
    source.write_text(text)
    pc = PC(MachineMemory(RAM), RAM)
    pc.load_kernel(parse_kernel(build_image(source), RAM))
    return TECHNIQUES[technique](pc, max_instructions=max_instructions)


def on_test_port(m: Monitor, action) -> None:
    m.pc.bus.register(PortDevice(action), [TEST_PORT])


def spy(m: Monitor, reason: ExitReason) -> list[Exit]:
    """Record every exit the table hands to ``reason``'s handler, then let it run."""
    seen: list[Exit] = []
    handler = m.handlers[reason]

    def recording(exit: Exit) -> None:
        seen.append(exit)
        handler(exit)
    m.handlers[reason] = recording
    return seen


def console(m: Monitor) -> str:
    return bytes(m.pc.outcome.console).decode("latin-1")


# == the table ====================================================================================
@BOTH
def test_dispatch_calls_the_handler_the_table_names_for_the_exit_reason(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n ret\n")
    got = []
    m.handlers[ExitReason.CPUID] = got.append
    exit = Exit(ExitReason.CPUID, 0x100000, 2)
    m.dispatch(exit)
    assert got == [exit]
    assert m.pc.outcome.halted_reason is None


@BOTH
def test_an_exit_with_no_handler_ends_the_run_with_its_reason(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n ret\n")
    m.handlers.pop(ExitReason.CPUID, None)
    m.dispatch(Exit(ExitReason.CPUID, 0x123456))
    assert m.pc.outcome.halted_reason == "guest crash: no handler for exit cpuid at EIP 0x00123456"


@BOTH
def test_a_bus_error_in_a_handler_ends_the_run_as_a_guest_crash(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n ret\n")

    def touches_nothing(exit):
        raise BusError(0x7FFF0000, 4)
    m.handlers[ExitReason.CPUID] = touches_nothing
    m.dispatch(Exit(ExitReason.CPUID, 0x100000))
    assert m.pc.outcome.halted_reason.startswith("guest crash: guest touched memory outside RAM")


@BOTH
def test_a_software_interrupt_reaches_the_exception_handler_with_its_vector_eip_and_length(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
    """ + gate(0x80, "on_int", "0xef") + """
        call idt_load
    site:
        int 0x80
        mov al, 3
        ret
    on_int:
        iretd
    """)
    seen = spy(m, ExitReason.EXCEPTION_NMI)
    result = m.run()
    assert result.exit_code == 3, result.halted_reason
    site = [e for e in seen if e.vector == 0x80]
    assert len(site) == 1
    assert site[0].software and site[0].length == 2
    assert m.fetch(site[0].eip).text == "int 0x80"


@BOTH
def test_an_exit_raised_by_a_hook_is_dispatched_by_the_loop_to_its_handler(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
        out 0xed, al
        mov al, 4
        ret
    """)
    on_test_port(m, lambda: m.stop_slice(Exit(ExitReason.CPUID, m.cpu.read(EIP), 2)))
    got = []
    m.handlers[ExitReason.CPUID] = got.append
    result = m.run()
    assert result.exit_code == 4
    assert [e.reason for e in got] == [ExitReason.CPUID]
    assert m.fetch(got[0].eip).text == "out 0xed, al"


# == faults and crashes in handlers ===================================================================
UD_GUEST = """
main:
""" + gate(6, "on_ud") + """
    call idt_load
site:
    out 0xed, al
    mov al, 1
    ret
on_ud:
    mov esi, ud_msg
    mov eax, dword ptr [esp]
    sub eax, site
    call put_kv_hex
    mov al, 0x66
    jmp exit
ud_msg: .asciz "#UD, frame EIP - site: "
"""


@BOTH
def test_a_guest_fault_raised_by_a_handler_is_delivered_through_the_guests_idt(tmp_path, technique):
    m = boot(tmp_path, technique, UD_GUEST)
    on_test_port(m, lambda: m.stop_slice(Exit(ExitReason.CPUID, m.cpu.read(EIP), 2)))

    def refuses(exit):
        raise GuestFault(UD, why="the test's handler refuses the instruction")
    m.handlers[ExitReason.CPUID] = refuses
    result = m.run()
    assert result.exit_code == 0x66, result.halted_reason
    assert console(m) == "#UD, frame EIP - site: 0x00000000\n"
    assert result.exits.get("exception_nmi", 0) >= 1


@BOTH
def test_an_unexpected_error_in_a_handler_the_loop_dispatches_ends_the_run_as_a_report(tmp_path, technique):
    m = boot(tmp_path, technique, UD_GUEST)
    on_test_port(m, lambda: m.stop_slice(Exit(ExitReason.CPUID, m.cpu.read(EIP), 2)))

    def broken(exit):
        raise RuntimeError("a bug in the handler")
    m.handlers[ExitReason.CPUID] = broken
    result = m.run()                                   # returns: nothing escapes
    assert result.halted_reason.startswith("guest crash: hvsim internal error")
    assert "RuntimeError: a bug in the handler" in result.halted_reason
    assert result.exit_code is None


@BOTH
def test_an_unexpected_error_in_a_handler_dispatched_inside_a_hook_ends_the_run_as_a_report(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
        ud2
        mov al, 1
        ret
    """)

    def broken(exit):
        raise KeyError("a bug in the exception handler")
    m.handlers[ExitReason.EXCEPTION_NMI] = broken
    result = m.run()
    assert result.halted_reason.startswith("guest crash: hvsim internal error: KeyError")
    assert result.exit_code is None


@BOTH
def test_an_error_in_a_device_model_ends_the_run_as_a_report(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n out 0xed, al\n mov al, 1\n ret\n")

    def broken():
        raise ZeroDivisionError("a bug in a device")
    on_test_port(m, broken)
    result = m.run()
    assert result.halted_reason.startswith("guest crash: hvsim internal error: ZeroDivisionError")


# == slices ===========================================================================================
@BOTH
def test_a_slice_stopped_without_an_exit_is_a_preemption_not_a_hlt(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
        xor ebx, ebx
        out 0xed, al
        jmp one                 # a stop from a hook lands at the next block boundary: end one here
    one:
        inc ebx
        out 0xed, al
        jmp two
    two:
        inc ebx
        out 0xed, al
        jmp three
    three:
        inc ebx
        mov esi, msg
        mov eax, ebx
        call put_kv_dec
        mov al, 5
        ret
    msg: .asciz "incs: "
    """)
    on_test_port(m, lambda: m.stop_slice(None))
    preempted = spy(m, ExitReason.PREEMPTION_TIMER)
    halted = spy(m, ExitReason.HLT)
    result = m.run()
    assert result.exit_code == 5 and console(m) == "incs: 3\n"
    assert len(preempted) >= 3 and halted == []
    assert "hlt" not in result.exits and "idle" not in result.exits
    assert m.state is VcpuState.RUNNING


TIMER_STORM = """
main:
""" + PIC_INIT.format(mask="0xfe") + gate(0x20, "on_tick") + """
    call idt_load
    mov al, 0x34
    out 0x43, al
    mov al, 0x64                # a divisor of 100: an interrupt every ~84 us
    out 0x40, al
    mov al, 0
    out 0x40, al
    sti
spin:
    inc ebx
    jmp spin
on_tick:
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
"""


@BOTH
@pytest.mark.parametrize("budget", [300_001, 411_111])
def test_the_instruction_budget_is_exact_while_timer_interrupts_cut_the_slices(tmp_path, technique, budget):
    m = boot(tmp_path, technique, TIMER_STORM, max_instructions=budget)
    result = m.run()
    assert result.halted_reason.startswith("runaway: stopped at --max-instructions")
    assert result.instructions == budget
    assert result.exits.get("external_interrupt", 0) >= 2


@BOTH
def test_the_instruction_budget_is_exact_when_a_hook_stops_every_slice(tmp_path, technique):
    m = boot(tmp_path, technique, "_start:\n xor ebx, ebx\n l: inc ebx\n out 0xed, al\n jmp l\n",
             max_instructions=3001, bare=True)
    on_test_port(m, lambda: m.stop_slice(None))
    result = m.run()
    assert result.instructions == 3001
    assert m.cpu.read(EBX) == 1000                     # xor, then 1000 times inc, out, jmp


@BOTH
def test_a_guest_that_exits_has_run_exactly_its_instructions(tmp_path, technique):
    m = boot(tmp_path, technique, "_start:\n xor eax, eax\n mov al, 7\n out 0xf4, al\n hlt\n", bare=True)
    result = m.run()
    assert result.exit_code == 7
    assert result.instructions == 3


@BOTH
def test_a_pit_reprogrammed_mid_slice_interrupts_at_its_new_rate_from_the_load(tmp_path, technique):
    """The BIOS rate's first tick is 55 ms away; 1 kHz loaded at t gives ticks at t+1 ms, t+2 ms."""
    m = boot(tmp_path, technique, """
    main:
    """ + PIC_INIT.format(mask="0xfe") + gate(0x20, "on_tick") + """
        call idt_load
        mov al, 0x34
        out 0x43, al
        mov al, 0xa9            # 0x4a9 = 1193: ~1 kHz
        out 0x40, al
        mov al, 0x04
        out 0x40, al
        sti
        mov ecx, 1250000        # 2.5 million instructions: 2.5 ms of virtual time
    spin:
        dec ecx
        jnz spin
        cli
        mov esi, msg
        mov eax, dword ptr [ticks]
        call put_kv_dec
        mov al, 0
        ret
    on_tick:
        inc dword ptr [ticks]
        push eax
        mov al, 0x20
        out 0x20, al
        pop eax
        iretd
    ticks: .long 0
    msg: .asciz "ticks: "
    """)
    result = m.run()
    assert result.exit_code == 0, result.halted_reason
    assert console(m) == "ticks: 2\n"


# == halted guests ======================================================================================
@BOTH
def test_hlt_with_interrupts_disabled_ends_the_run_at_once(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n cli\n hlt\n mov al, 1\n ret\n")
    result = m.run()
    assert result.halted_reason == "halted: hlt with interrupts disabled, nothing can wake the guest"
    assert result.virtual_ns < 1_000_000                   # no time skipped to a timer


@BOTH
def test_hlt_with_the_timer_masked_at_the_pic_ends_the_run_at_once(tmp_path, technique):
    m = boot(tmp_path, technique, "main:\n mov al, 0xff\n out 0x21, al\n sti\n hlt\n mov al, 1\n ret\n")
    result = m.run()
    assert result.halted_reason == ("halted: hlt with every armed timer's interrupt masked or blocked "
                                    "(PIC, I/O APIC, local APIC), nothing can wake the guest")
    assert result.virtual_ns < 1_000_000
    assert "idle" not in result.exits


@BOTH
def test_hlt_whose_timer_interrupts_all_die_on_the_way_ends_the_run(tmp_path, technique):
    """The PIT's IRQ 0 reaches the I/O APIC, whose message the local APIC holds back for ever
    (TPR 0xf0 above the vector): timers fire, no interrupt arrives, QEMU sleeps for ever. The
    run ends after IDLE_LIMIT deadlines, not never."""
    m = boot(tmp_path, technique, """
    main:
    """ + PIC_INIT.format(mask="0xff") + """
        mov dword ptr [0xfee000f0], 0x1ff
        mov dword ptr [0xfee00080], 0xf0
        mov dword ptr [0xfec00000], 0x14
        mov dword ptr [0xfec00010], 0x31
        mov al, 0x34
        out 0x43, al
        mov al, 0x9c
        out 0x40, al
        mov al, 0x2e
        out 0x40, al
        sti
        hlt
        mov al, 1
        ret
    """)
    result = m.run()
    assert result.halted_reason == (f"halted: {IDLE_LIMIT} timer deadlines passed while the guest slept and no "
                                    f"interrupt reached the CPU, nothing can wake the guest")
    assert result.exits.get("idle") == IDLE_LIMIT and "external_interrupt" not in result.exits


@BOTH
def test_hlt_inside_the_timer_handler_before_its_eoi_ends_the_run_at_once(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
    """ + PIC_INIT.format(mask="0xfe") + gate(0x20, "on_tick") + """
        call idt_load
        sti
        hlt
        mov al, 1
        ret
    on_tick:
        sti
        hlt                     # IRQ0 is in service: no further tick can be taken
        mov al, 2
        jmp exit
    """)
    result = m.run()
    assert result.halted_reason == ("halted: hlt with every armed timer's interrupt masked or blocked "
                                    "(PIC, I/O APIC, local APIC), nothing can wake the guest")
    assert result.exits.get("external_interrupt") == 1
    assert result.virtual_ns < 2 * ns_for_ticks(0x10000)    # one idle skip, not an endless series


@BOTH
def test_hlt_after_a_one_shot_fired_ends_the_run_with_no_timer_armed(tmp_path, technique):
    m = boot(tmp_path, technique, """
    main:
    """ + PIC_INIT.format(mask="0xfe") + gate(0x20, "on_tick") + """
        call idt_load
        mov al, 0x30            # channel 0, mode 0: one interrupt, then none
        out 0x43, al
        mov al, 0x64
        out 0x40, al
        mov al, 0
        out 0x40, al
        sti
        hlt
        hlt
        mov al, 1
        ret
    on_tick:
        push eax
        mov al, 0x20
        out 0x20, al
        pop eax
        iretd
    """)
    result = m.run()
    assert result.halted_reason == "halted: hlt with no timer armed, nothing can wake the guest"
    assert result.exits.get("external_interrupt") == 1


@BOTH
def test_a_halted_guest_sleeps_until_its_timer_without_running_instructions(tmp_path, technique):
    # The BIOS leaves IRQ0 on vector 8 at 18.2 Hz; its first edge is 65536 PIT ticks after boot.
    m = boot(tmp_path, technique, """
    main:
    """ + gate(8, "on_tick") + """
        call idt_load
        sti
        hlt
        mov al, 1
        ret
    on_tick:
        mov al, 0
        jmp exit
    """)
    result = m.run()
    assert result.exit_code == 0, result.halted_reason
    assert result.exits.get("idle", 0) >= 1
    assert ns_for_ticks(0x10000) <= result.virtual_ns < ns_for_ticks(0x10000) + 100_000
    assert result.instructions < 100_000


# == the interrupt shadow =============================================================================
SHADOW_GUEST = """
main:
""" + PIC_INIT.format(mask="0xef") + gate(0x24, "on_irq4") + gate(0x27, "on_spurious") + """
    call idt_load
    call raise_irq4
    xor ebx, ebx
    {body}
    cli
    mov dx, 0x3f9               # IER = 0: IRQ4 goes low; read IIR
    mov al, 0
    out dx, al
    mov dx, 0x3fa
    in al, dx
    mov esi, msg_ebx
    mov eax, dword ptr [seen_ebx]
    call put_kv_dec
    mov esi, msg_eip
    mov eax, dword ptr [frame_eip]
    sub eax, after
    call put_kv_hex
    mov esi, msg_runs
    mov eax, dword ptr [runs]
    call put_kv_dec
    mov al, 0
    ret

# COM1's IER.THRI with the transmitter empty raises IRQ4 at once; with IF=0 it waits in the PIC.
raise_irq4:
    mov dx, 0x3fd
wait_thre:
    in al, dx
    test al, 0x20
    jz wait_thre
    mov dx, 0x3f9
    mov al, 0x02
    out dx, al
    ret

on_irq4:
    push eax
    push edx
    mov dword ptr [seen_ebx], ebx
    mov eax, dword ptr [esp + 8]
    mov dword ptr [frame_eip], eax
    inc dword ptr [runs]
    mov dx, 0x3f9
    mov al, 0
    out dx, al
    mov dx, 0x3fa
    in al, dx
    mov al, 0x20
    out 0x20, al
    pop edx
    pop eax
    iretd
on_spurious:
    iretd

seen_ebx: .long 0xffffffff
frame_eip: .long 0
runs: .long 0
msg_ebx: .asciz "ebx seen by the handler: "
msg_eip: .asciz "frame EIP - after: "
msg_runs: .asciz "handler runs: "
"""


@BOTH
def test_an_interrupt_pending_at_sti_is_taken_after_exactly_one_more_instruction(tmp_path, technique):
    m = boot(tmp_path, technique, SHADOW_GUEST.format(body="""
    sti
    inc ebx
after:
    inc ebx
    inc ebx
    """))
    result = m.run()
    assert result.exit_code == 0, result.halted_reason
    assert console(m) == "ebx seen by the handler: 1\nframe EIP - after: 0x00000000\nhandler runs: 1\n"


@BOTH
def test_sti_hlt_with_an_interrupt_pending_wakes_at_once_after_the_hlt(tmp_path, technique):
    m = boot(tmp_path, technique, SHADOW_GUEST.format(body="""
    sti
    hlt
after:
    inc ebx
    """))
    result = m.run()
    assert result.exit_code == 0, result.halted_reason
    assert console(m) == "ebx seen by the handler: 0\nframe EIP - after: 0x00000000\nhandler runs: 1\n"
    assert "idle" not in result.exits
    assert result.virtual_ns < 1_000_000
