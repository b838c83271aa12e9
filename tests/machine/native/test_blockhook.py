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
from hypervisor.machine.native import blockhook as ifwatch  # the module this file once tested
from hypervisor.machine.native.blockhook import InterruptWindowWatch, load_native, why_not

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
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
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
    monkeypatch.setattr(ifwatch, "why_not", lambda: "blockhook.c was not built")
    monkeypatch.setattr(ifwatch, "_warned", False)
    code, (_, _, _, nop, _, _) = program(CLI, SPIN, STI, NOP, CLI, HLT)
    cpus = [ring0_cpu(code) for _ in range(2)]
    watches = [InterruptWindowWatch(cpu) for cpu in cpus]
    assert not any(w.native for w in watches)
    assert all(cpu.counting == "count" for cpu in cpus)      # and the CPU counts with count=
    err = capsys.readouterr().err
    assert err == ("hvsim: native block hook unavailable (blockhook.c was not built); "
                   "counting with emu_start(count=), about 2x slower\n")
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


# -- block counting: exact where it must be ---------------------------------------------------
needs_c = pytest.mark.skipif(load_native() is None, reason="the C callback was not built")


def block_cpu(code: bytes) -> Cpu:
    cpu = ring0_cpu(code)
    assert cpu.counting == "block"
    return cpu


@needs_c
def test_an_exact_run_stops_at_its_budget_inside_a_block():
    code = INC_EAX * 10 + HLT                       # one block of eleven instructions
    for budget in (1, 4, 10):
        cpu = block_cpu(code)
        cpu.write(EAX, 0)
        cpu.run(BASE, UNTIL_NEVER, budget, exact=True)
        assert cpu.executed(budget) == budget and cpu.read(EAX) == budget
        assert cpu.read(EIP) == BASE + budget
        assert cpu.ran_out(budget)


@needs_c
def test_the_short_block_of_an_exact_stop_is_dropped_so_the_next_run_goes_on():
    code = INC_EAX * 10 + HLT
    cpu = block_cpu(code)
    cpu.write(EAX, 0)
    cpu.run(BASE, UNTIL_NEVER, 3, exact=True)
    cpu.run(cpu.read(EIP), UNTIL_NEVER, BUDGET)
    assert cpu.read(EAX) == 10 and cpu.read(EIP) == BASE + 11      # ran on to the hlt


@needs_c
def test_a_run_that_is_not_exact_stops_at_the_first_block_boundary_after_its_budget():
    cpu = block_cpu(INC_EAX * 10 + b"\xeb\x00" + HLT)   # ... jmp $+2 ends the block
    cpu.run(BASE, UNTIL_NEVER, 3)
    assert cpu.executed(3) == 11 and cpu.read(EIP) == BASE + 12


@needs_c
def test_port_io_above_the_iopl_is_refused_before_it_runs_with_the_block_before_it_done():
    IN_AL_DX = b"\xec"
    code = INC_EAX * 3 + IN_AL_DX + INC_EAX + HLT
    cpu = block_cpu(code)
    seen = []
    from unicorn import UC_HOOK_INSN
    from unicorn.x86_const import UC_X86_INS_IN
    cpu.uc.hook_add(UC_HOOK_INSN, lambda *a: seen.append(a) or 0, None, 1, 0, UC_X86_INS_IN)
    cpu.refuse_port_io_above_iopl()
    cpu._hflags.value |= 3                          # CPL 3 with IOPL 0 (no code runs at ring 3 here)
    cpu.write(EAX, 0)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.refused_io == (BASE + 3, 1)
    assert cpu.read(EIP) == BASE + 3 and cpu.read(EAX) == 3 and seen == []
    assert cpu.executed(BUDGET) == 4                # three incs, and the refused in (count= counts a fault)


@needs_c
def test_code_rewritten_in_place_is_counted_afresh():
    """Same address, same size, other instruction count: the cache must not answer."""
    five_nops, mov = b"\x90" * 5 + HLT, b"\xb8\x01\x00\x00\x00" + HLT      # 6 against 2 instructions
    cpu = block_cpu(five_nops)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.executed(BUDGET) == 6
    cpu.uc.mem_write(BASE, mov)
    cpu.uc.ctl_remove_cache(BASE, BASE + len(mov))   # as machine/pc.py does for a host write
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.executed(BUDGET) == 2


@needs_c
def test_a_stop_asked_from_an_io_hook_lands_at_the_next_block_start():
    OUT_DX_AL = b"\xee"
    code = OUT_DX_AL + INC_EAX * 3 + b"\xeb\x00" + INC_EAX + HLT
    cpu = block_cpu(code)
    from unicorn import UC_HOOK_INSN
    from unicorn.x86_const import UC_X86_INS_OUT
    cpu.uc.hook_add(UC_HOOK_INSN, lambda *a: cpu.stop(), None, 1, 0, UC_X86_INS_OUT)
    cpu.write(EAX, 0)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.read(EIP) == BASE + 6 and cpu.read(EAX) == 3        # the block ran to its jmp
    assert cpu.executed(BUDGET) == 5
    assert cpu.executed_at_stop(BUDGET) == 1                         # the out that asked


@needs_c
def test_a_technique_with_a_virtual_iopl_can_refuse_port_io_from_a_ring():
    code = INC_EAX * 2 + b"\xee" + HLT            # out dx, al
    cpu = block_cpu(code)
    cpu.refuse_port_io_from_cpl(3)
    cpu._hflags.value |= 3
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.refused_io == (BASE + 2, 1) and cpu.read(EIP) == BASE + 2
    cpu = block_cpu(code)
    cpu.refuse_port_io_from_cpl(None)
    cpu._hflags.value |= 3
    cpu.run(BASE, UNTIL_NEVER, 3, exact=True)          # inc, inc, out: the out runs (hlt would #GP)
    assert cpu.refused_io is None and cpu.read(EIP) == BASE + 3


@needs_c
def test_port_io_in_a_block_already_counted_is_refused_once_the_cpl_rises():
    """The hook's fast path answers a block it knows without decoding it: the I/O guard
    must still see a block that first ran where port I/O was allowed."""
    code = INC_EAX * 2 + b"\xec" + HLT               # in al, dx
    cpu = block_cpu(code)
    cpu.refuse_port_io_above_iopl()
    cpu.run(BASE, UNTIL_NEVER, BUDGET)                 # CPL 0: the in runs, the block is known
    assert cpu.refused_io is None and cpu.read(EIP) == BASE + 4
    cpu._hflags.value |= 3                             # CPL 3 with IOPL 0
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.refused_io == (BASE + 2, 1) and cpu.read(EIP) == BASE + 2


@needs_c
@pytest.mark.parametrize("known", [False, True], ids=["new-block", "known-block"])
def test_an_io_hook_sees_its_own_eip_after_a_fault_hook_moved_eip(known):
    """Unicorn leaves 'skip the PC sync' set after a hook's EIP write for the rest of the run;
    from a fault's hook that made every later I/O hook see its block's start. ``known``: the
    block after the fault already ran once, so the hook's fast path meets it."""
    from unicorn import UC_HOOK_INSN, UC_HOOK_INTR
    from unicorn.x86_const import UC_X86_INS_IN
    code = b"\xcc" + NOP * 15 + NOP * 2 + b"\xec" + NOP + HLT     # int3; ...; 0x10: nop; nop; in; nop; hlt
    cpu = block_cpu(code)
    seen = []

    def on_int3(uc, intno, _):
        cpu.cut_block()
        cpu.write(EIP, BASE + 0x10)

    cpu.uc.hook_add(UC_HOOK_INTR, on_int3)
    cpu.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, _: seen.append(cpu.read(EIP)) or 0, None, 1, 0,
                    UC_X86_INS_IN)
    if known:
        cpu.run(BASE + 0x10, UNTIL_NEVER, BUDGET)
        assert seen == [BASE + 0x12]
        seen.clear()
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert seen == [BASE + 0x12]


@needs_c
@pytest.mark.parametrize("armed", [True, False], ids=["armed", "not-armed"])
def test_the_nmi_watch_stops_right_after_the_iret_that_unblocks_nmis(armed):
    """An NMI that arrives while an earlier NMI's handler runs waits for that handler's iret,
    then is taken at once: the watch stops at the first block after the guest's own iret."""
    import struct as _struct
    from hypervisor.machine.native.blockhook import STOP_NMI
    code = INC_EAX * 2 + IRETD + NOP * 13 + INC_EAX + INC_EAX + HLT     # iretd to BASE + 0x10
    cpu = block_cpu(code)
    cpu.uc.mem_write(0x8FF4, _struct.pack("<III", BASE + 0x10, 0x08, 0x2))
    cpu.write(ESP, 0x8FF4)
    cpu.write(EAX, 0)
    cpu.nmi_blocked = True
    assert cpu.watch_nmi_window(armed)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    if armed:
        assert (cpu.read(EIP), cpu.read(EAX), cpu._record.stopped) == (BASE + 0x10, 2, STOP_NMI)
        assert cpu.executed(BUDGET) == 3 and not cpu._record.nmi_armed      # one shot
    else:
        assert (cpu.read(EIP), cpu.read(EAX)) == (BASE + 0x13, 4)


# movaps xmm0, [ebx] (0f 28 03) and movups xmm0, [ebx] (0f 10 03)
MOVAPS_LOAD, MOVUPS_LOAD = b"\x0f\x28\x03", b"\x0f\x10\x03"


def sse_cpu(code: bytes, ebx: int, osfxsr: bool = True) -> Cpu:
    from hypervisor.machine.cpu import CR4, EBX
    cpu = block_cpu(code)
    cpu.write(CR4, 0x200 if osfxsr else 0)
    cpu.write(EBX, ebx)
    cpu.write(EAX, 0)
    return cpu


@needs_c
def test_a_misaligned_movaps_is_refused_with_the_block_before_it_done():
    """QEMU 7.2 raises #GP(0) for a misaligned 16-byte operand of a legacy SSE instruction;
    Unicorn's QEMU 5.0 does not check: the block hook stops before the block, the CPU runs it
    up to the instruction, and ``misaligned`` names it (the monitor raises the #GP)."""
    code = INC_EAX * 3 + MOVAPS_LOAD + INC_EAX + HLT
    cpu = sse_cpu(code, 0x2008)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.misaligned == BASE + 3 and cpu.read(EIP) == BASE + 3 and cpu.read(EAX) == 3
    assert cpu.executed(BUDGET) == 4                # the refused instruction counts, as count= counts a fault


@needs_c
def test_an_aligned_movaps_runs_and_the_block_goes_on():
    code = INC_EAX * 3 + MOVAPS_LOAD + INC_EAX + HLT
    for _ in range(2):                               # the second run meets the blocks already known
        cpu = sse_cpu(code, 0x2010)
        cpu.run(BASE, UNTIL_NEVER, BUDGET)
        assert cpu.misaligned is None and cpu.read(EAX) == 4 and cpu.read(EIP) == BASE + 8
        assert cpu.executed(BUDGET) == 6


@needs_c
def test_movups_and_sse_with_osfxsr_clear_are_not_checked():
    cpu = sse_cpu(INC_EAX + MOVUPS_LOAD + HLT, 0x2008)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.misaligned is None and cpu.read(EIP) == BASE + 5
    cpu = sse_cpu(INC_EAX + MOVAPS_LOAD + HLT, 0x2008, osfxsr=False)
    with pytest.raises(Exception):                   # #UD: Unicorn's own answer, no check of ours
        cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.misaligned is None


@needs_c
def test_a_misaligned_operand_is_found_by_its_linear_address():
    """Segment base + offset: DS based at 8 makes an aligned offset misaligned."""
    code = MOVAPS_LOAD + HLT
    cpu = sse_cpu(code, 0x2000)
    cpu.uc.mem_write(0x518, struct.pack("<Q", 0x00CF92000008FFFF))    # 0x18: data, base 8
    cpu.uc.reg_write(GDTR, (0, 0x500, 0x1F, 0))
    cpu.uc.reg_write(DS, 0x18)
    cpu.run(BASE, UNTIL_NEVER, BUDGET)
    assert cpu.misaligned == BASE


@needs_c
def test_an_exact_budget_that_ends_before_the_sse_instruction_stops_there():
    code = INC_EAX * 3 + MOVAPS_LOAD + HLT
    cpu = sse_cpu(code, 0x2008)
    cpu.run(BASE, UNTIL_NEVER, 2, exact=True)
    assert cpu.misaligned is None and cpu.read(EIP) == BASE + 2 and cpu.executed(2) == 2
