"""The interrupt-window watch stops a ring-0 guest exactly where IF becomes 1, and nowhere else.

Each program runs on a bare CPU at ring 0 with flat segments and IF = 0, as the native
technique runs a guest. Addresses are asserted against hand-assembled bytes, so "where it
stopped" is the instruction boundary, not an approximation. Both the C callback and the
Python fallback run every behaviour.
"""
import struct

import pytest
from unicorn import UC_HOOK_BLOCK

from hypervisor.machine.cpu import CR0, CS, DS, EAX, EFLAGS, EFLAGS_IF, EIP, ESP, GDTR, SS, Cpu
from hypervisor.machine.native import ifwatch
from hypervisor.machine.native.ifwatch import InterruptWindowWatch, load_native, why_not

BASE = 0x1000
UNTIL_NEVER = 1 << 40
BUDGET = 100_000
LOOPS = 0x40

CLI, STI, NOP, HLT, PUSHFD, POPFD, INC_EAX, IRETD = b"\xfa", b"\xfb", b"\x90", b"\xf4", b"\x9c", b"\x9d", b"\x40", b"\xcf"
# mov ecx, LOOPS; l: dec ecx; jnz l   (2 + 2 * LOOPS instructions)
SPIN = b"\xb9" + struct.pack("<I", LOOPS) + b"\x49\x75\xfd"
SPIN_INSNS = 1 + 2 * LOOPS
OR_IF_ON_STACK = b"\x81\x0c\x24" + struct.pack("<I", EFLAGS_IF)      # or dword ptr [esp], 0x200


def program(*pieces: bytes) -> tuple[bytes, list[int]]:
    """The code and the address of each piece."""
    code, at = b"", []
    for piece in pieces:
        at.append(BASE + len(code))
        code += piece
    return code, at


def ring0_cpu(code: bytes) -> Cpu:
    cpu = Cpu(tcg_buffer_mib=8)
    uc = cpu.uc
    uc.mem_map(0, 0x100000)
    gdt = b"\0" * 8 + struct.pack("<QQ", 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
    uc.mem_write(0x500, gdt)
    uc.reg_write(GDTR, (0, 0x500, len(gdt) - 1, 0))
    uc.reg_write(CR0, 0x11)
    uc.reg_write(CS, 0x08)
    for seg in (SS, DS):
        uc.reg_write(seg, 0x10)
    cpu.write(ESP, 0x9000)
    cpu.write(EFLAGS, 0x2)
    uc.mem_write(BASE, code)
    return cpu


def run(cpu: Cpu) -> int:
    """Run from BASE with an exact budget; the number of instructions that ran."""
    cpu.uc.emu_start(BASE, UNTIL_NEVER, count=BUDGET)
    return cpu.executed(BUDGET)


@pytest.fixture(params=[True, False], ids=["c", "python"])
def native(request):
    if request.param and load_native() is None:
        pytest.fail(f"the C callback was not built: {why_not()}")
    return request.param


def test_the_install_step_built_the_c_callback():
    assert load_native() is not None, why_not()


def test_sti_stops_at_the_shadow_instruction_before_it_runs(native):
    code, (_, _, _, nop, _, _) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpu = ring0_cpu(code)
    watch = InterruptWindowWatch(cpu, native=native)
    assert watch.native == native
    watch.arm()
    executed = run(cpu)
    assert watch.fired and not watch.armed
    assert watch.address == cpu.read(EIP) == nop
    assert cpu.read(EFLAGS) & EFLAGS_IF and watch.eflags & EFLAGS_IF
    assert executed == 1 + SPIN_INSNS + 1          # cli, the spin, sti: the nop has not run


def test_popf_that_sets_if_stops_at_the_next_instruction(native):
    code, (*_, after, _, _) = program(CLI, SPIN, PUSHFD, OR_IF_ON_STACK, POPFD, INC_EAX, CLI, HLT)
    cpu = ring0_cpu(code)
    cpu.write(EAX, 0)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    executed = run(cpu)
    assert watch.fired and watch.address == cpu.read(EIP) == after
    assert cpu.read(EAX) == 0
    assert executed == 1 + SPIN_INSNS + 3


def test_iret_to_a_frame_with_if_set_stops_at_the_return_address(native):
    target = BASE + 0x40
    # push 0x202 (EFLAGS with IF); push 0x08 (CS); push target (EIP)
    frame = b"\x68" + struct.pack("<I", 0x202) + b"\x6a\x08" + b"\x68" + struct.pack("<I", target)
    code, _ = program(CLI, SPIN, frame, IRETD, HLT)
    code = code.ljust(target - BASE, b"\x90") + INC_EAX + CLI + HLT
    cpu = ring0_cpu(code)
    cpu.write(EAX, 0)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    executed = run(cpu)
    assert watch.fired and watch.address == cpu.read(EIP) == target
    assert cpu.read(EFLAGS) & EFLAGS_IF and cpu.read(EAX) == 0
    assert executed == 1 + SPIN_INSNS + 4


def test_a_disarmed_watch_never_stops_the_cpu(native):
    code, (*_, hlt) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpu = ring0_cpu(code)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    watch.disarm()
    run(cpu)
    assert not watch.fired
    assert cpu.read(EIP) == hlt + 1                 # ran to the hlt, which returned


def test_an_armed_watch_lets_code_with_if_clear_run_to_the_end(native):
    code, (*_, hlt) = program(CLI, SPIN, PUSHFD, POPFD, NOP, HLT)
    cpu = ring0_cpu(code)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    executed = run(cpu)
    assert not watch.fired and watch.armed
    assert cpu.read(EIP) == hlt + 1
    assert executed == 1 + SPIN_INSNS + 4


def test_the_watch_is_one_shot_and_the_guest_resumes_where_it_stopped(native):
    code, (*_, nop, _, hlt) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpu = ring0_cpu(code)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    run(cpu)
    assert watch.fired and cpu.read(EIP) == nop
    cpu.uc.emu_start(nop, UNTIL_NEVER, count=BUDGET)
    assert cpu.read(EIP) == hlt + 1 and watch.fired          # not re-armed: no second stop
    watch.arm()
    assert not watch.fired


def test_arming_with_if_already_set_stops_at_the_first_block(native):
    code, _ = program(NOP, NOP, HLT)
    cpu = ring0_cpu(code)
    cpu.write(EFLAGS, 0x2 | EFLAGS_IF)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    assert run(cpu) == 0
    assert watch.fired and cpu.read(EIP) == BASE


def test_unicorn_puts_a_block_hook_only_into_blocks_translated_after_it():
    """The library quirk the watch's flush exists for: a late hook misses cached blocks."""
    code, (*_, hlt) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpu = ring0_cpu(code)
    run(cpu)                                             # translate every block, no hook yet
    seen = []
    cpu.uc.hook_add(UC_HOOK_BLOCK, lambda uc, address, size, _: seen.append(address))
    run(cpu)
    assert seen == [] and cpu.read(EIP) == hlt + 1
    cpu.uc.ctl_flush_tb()
    run(cpu)
    assert BASE in seen


def test_a_watch_made_after_code_ran_still_sees_every_block(native):
    code, (*_, nop, _, _) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpu = ring0_cpu(code)
    run(cpu)                                             # every block translated without the hook
    cpu.write(EFLAGS, 0x2)
    watch = InterruptWindowWatch(cpu, native=native)
    watch.arm()
    run(cpu)
    assert watch.fired and cpu.read(EIP) == nop


def test_the_fallback_warns_once_when_the_c_callback_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(ifwatch, "load_native", lambda: None)
    monkeypatch.setattr(ifwatch, "_why_not", "ifwatch.c was not built")
    monkeypatch.setattr(ifwatch, "_warned", False)
    code, (_, _, _, nop, _, _) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpus = [ring0_cpu(code) for _ in range(2)]
    watches = [InterruptWindowWatch(cpu) for cpu in cpus]
    assert not any(w.native for w in watches)
    err = capsys.readouterr().err
    assert err == ("hvsim: native block hook unavailable (ifwatch.c was not built); "
                   "using a slow Python fallback\n")
    watches[0].arm()
    run(cpus[0])
    assert watches[0].fired and watches[0].address == nop


def test_asking_for_the_c_callback_when_it_is_missing_is_an_error(monkeypatch):
    monkeypatch.setattr(ifwatch, "load_native", lambda: None)
    with pytest.raises(OSError):
        InterruptWindowWatch(ring0_cpu(HLT), native=True)


def test_the_native_hook_reads_if_straight_from_the_cpu_state_when_cpu_knows_where():
    cpu = Cpu()
    watch = InterruptWindowWatch(cpu)
    if not watch.native:
        pytest.skip("the C hook is not built here")
    assert watch._watch.eflags_at == cpu.eflags_address
