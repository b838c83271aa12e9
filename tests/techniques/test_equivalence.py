"""Popek and Goldberg's equivalence property, checked by hypothesis.

A random sequence of privileged instructions, run by the guest kernel under trap-and-emulate
(deprivileged to ring 1, every instruction trapping and emulated on the virtual CPU), must leave
the same CPU state the guest could observe as the same sequence run natively at ring 0: control
registers, GDTR/IDTR, IF, MSRs, and the general registers the instructions read into.
"""
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.image import build_image
from hypervisor.machine.cpu import (CR0, CR2, CR3, CR4, EAX, EBP, EBX, ECX, EDI, EDX, EFLAGS,
                                    EFLAGS_IF, ESI, GDTR, IDTR)
from hypervisor.machine.memory import MachineMemory
from hypervisor.machine.pc import PC
from hypervisor.image.multiboot import parse_kernel
from hypervisor.techniques.native import Native
from hypervisor.techniques.trap import TrapAndEmulate

RAM = 4 << 20
TABLE = 0x200000          # where lgdt/lidt operands live (inside RAM)
MSRS = (0x174, 0x175, 0x176)
CR0_BITS = (0x2, 0x4, 0x8, 0x20, 0x10000, 0x40000)
CR4_BITS = (0x4, 0x8, 0x10, 0x200)


def _bits(pool):
    return st.lists(st.sampled_from(pool), unique=True).map(sum)


def _op():
    u32 = st.integers(0, 0xFFFFFFFF)
    return st.one_of(
        st.just("cli"), st.just("sti"), st.just("clts"), st.just("wbinvd"), st.just("invd"),
        _bits(CR0_BITS).map(lambda b: f"mov eax, {0x11 | b:#x}\n mov cr0, eax"),
        _bits(CR4_BITS).map(lambda b: f"mov eax, {b:#x}\n mov cr4, eax"),
        u32.map(lambda v: f"mov eax, {v & ~0xFFF:#x}\n mov cr3, eax"),
        u32.map(lambda v: f"mov eax, {v:#x}\n mov cr2, eax"),
        st.sampled_from([0, 2, 3, 4]).flatmap(lambda n: st.sampled_from(["ebx", "esi", "edi", "ebp"]).map(
            lambda r: f"mov {r}, cr{n}")),
        st.integers(0, 0xF).map(lambda v: f"mov eax, {v | 1:#x}\n lmsw ax"),
        st.tuples(st.sampled_from(["lgdt", "lidt"]), st.integers(0, 0x7FF), st.integers(0, 0xFFFF)).map(
            lambda t: f"mov eax, {TABLE:#x}\n mov word ptr [eax], {t[1]:#x}\n"
                      f" mov dword ptr [eax + 2], {TABLE + t[2] * 8:#x}\n"
                      f" .byte 0x0f, 0x01, {0x10 if t[0] == 'lgdt' else 0x18}"),
        st.tuples(st.sampled_from(MSRS), u32).map(
            lambda t: f"mov ecx, {t[0]:#x}\n mov eax, {t[1]:#x}\n xor edx, edx\n wrmsr"),
        st.sampled_from(MSRS).map(lambda m: f"mov ecx, {m:#x}\n rdmsr\n mov esi, eax"),
        st.just("mov eax, 0x1000\n invlpg [eax]"),
    )


def _run(cls, image):
    pc = PC(MachineMemory(RAM), RAM)
    pc.load_kernel(parse_kernel(image, RAM))
    monitor = cls(pc, max_instructions=100_000)
    result = monitor.run()
    assert result.exit_code == 0, result.halted_reason
    return monitor


def _gprs(cpu):
    return [cpu.read(r) & 0xFFFFFFFF for r in (EAX, EBX, ECX, EDX, ESI, EDI, EBP)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_op(), min_size=1, max_size=12))
def test_privileged_sequences_leave_the_same_state_under_trap_as_at_ring0(tmp_path, ops):
    src = tmp_path / "seq.S"
    src.write_text("_start:\n " + "\n ".join(ops) + "\n mov al, 0\n out 0xf4, al\n hlt\n")
    image = build_image(src)
    native, trap = _run(Native, image), _run(TrapAndEmulate, image)
    n, v = native.cpu, trap.vcpu
    real = {"if": bool(n.read(EFLAGS) & EFLAGS_IF), "cr0": n.read(CR0), "cr2": n.read(CR2),
            "cr3": n.read(CR3), "cr4": n.read(CR4), "gdtr": n.table_register(GDTR),
            "idtr": n.table_register(IDTR),
            "msrs": {m: n.uc.msr_read(m) for m in sorted(v.msrs)}}
    assert v.architectural() == real
    assert _gprs(trap.cpu) == _gprs(n)
