"""The sensitive-but-unprivileged instructions, performed on virtual state, give what the CPU gives.

``vmm/sensitive.py`` is what binary translation's callouts do. The referee is the real CPU
(Unicorn, QEMU 5) running the same instruction at ring 0 with the same GDT, EFLAGS and registers:
hypothesis draws descriptors (every type, DPL, granularity, present or not), selectors (every
RPL, the LDT bit, beyond the GDT's limit, null) and flags, runs ``lar``/``lsl``/``verr``/``verw``,
``pushf``/``popf``, ``sgdt``/``sidt``/``sldt``/``str``/``smsw`` and ``mov r, sreg`` on the CPU,
then on a fake technique whose virtual CPU holds what the real one held, and compares the
destination, ZF (or all of EFLAGS) and memory.
"""
from __future__ import annotations

import struct

import keystone
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
from unicorn import x86_const as X

from hypervisor.machine.descriptors import encode_segment
from hypervisor.vmm.decode import decode
from hypervisor.vmm.sensitive import SENSITIVE, visible_eflags
from hypervisor.vmm.vcpu import VirtualCpu
from tests.vmm.test_emulate import FakeGuest

GDT, STACK, DATA, CODE = 0x1000, 0x8000, 0x4000, 0x10000
FLAT_CODE, FLAT_DATA = 0x08, 0x10
ENTRIES = 8                         # 0 null, 1 code, 2 data, 3..7 drawn
_ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_32)


class Fake:
    """The technique's side: a virtual CPU and the registers, memory and GDT the CPU had."""

    def __init__(self, uc: Uc, gdt: list[int], gdt_limit: int):
        self.uc = uc
        self.vcpu = VirtualCpu(cpl=0, iflag=bool(uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200),
                               iopl=(uc.reg_read(X.UC_X86_REG_EFLAGS) >> 12) & 3,
                               cr0=uc.reg_read(X.UC_X86_REG_CR0), gdt_base=GDT, gdt_limit=gdt_limit,
                               idt_base=0x2000, idt_limit=0x7FF, ldtr=uc.reg_read(X.UC_X86_REG_LDTR)[0],
                               tr=uc.reg_read(X.UC_X86_REG_TR)[0])
        self.gdt, self.gdt_limit = gdt, gdt_limit
        self.regs = {name: uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))
                     for name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")}
        self.eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        self.memory = bytearray(uc.mem_read(0, 0x10000))
        self.interrupts_enabled = 0

    def read_register(self, name: str) -> int:
        wide = {"ax": "eax", "bx": "ebx", "cx": "ecx", "dx": "edx"}
        return self.regs[wide[name]] & 0xFFFF if name in wide else self.regs[name]

    def write_register(self, name: str, value: int) -> None:
        self.regs[name] = value & 0xFFFFFFFF

    operand_value = FakeGuest.operand_value      # registers, memory and immediates, as there

    def effective_address(self, mem) -> int:
        return mem.offset(self.read_register) & 0xFFFFFFFF

    def segment_base(self, segment: str) -> int:
        return 0

    def read_linear(self, address: int, length: int) -> bytes:
        return bytes(self.memory[address:address + length])

    def write_linear(self, address: int, data: bytes) -> None:
        self.memory[address:address + len(data)] = data

    def real_eflags(self) -> int:
        return self.eflags

    def set_real_eflags(self, value: int) -> None:
        self.eflags = value

    def guest_selector(self, segment: str) -> int:
        return {"cs": FLAT_CODE, "ss": FLAT_DATA}.get(segment, FLAT_DATA)

    def descriptor_raw(self, selector: int) -> int | None:
        if selector & 4 or (selector | 7) > self.gdt_limit:
            return None                     # no LDT here; beyond the limit
        return self.gdt[selector >> 3]

    def interrupt_flag_set(self) -> None:
        self.interrupts_enabled += 1


def machine(gdt: list[int], gdt_limit: int, eflags: int, registers: dict[str, int], code: str) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x20000)
    uc.mem_write(GDT, b"".join(struct.pack("<Q", d) for d in gdt))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, gdt_limit, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x2000, 0x7FF, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CS, FLAT_CODE)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(reg, FLAT_DATA)
    uc.reg_write(X.UC_X86_REG_ESP, STACK)
    uc.reg_write(X.UC_X86_REG_TR, (0x28, 0x9000, 0x67, 0x89))     # a TR to be stored (no ltr needed)
    for name, value in registers.items():
        uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
    uc.mem_write(CODE, bytes(_ks.asm(code, CODE)[0]))
    return uc


def both(gdt, gdt_limit, eflags, registers, code):
    """Run ``code`` (one instruction) on the CPU and through the emulator; both sides' results."""
    uc = machine(gdt, gdt_limit, eflags, registers, code)
    fake = Fake(uc, gdt, gdt_limit)
    raw = bytes(_ks.asm(code, CODE)[0])
    uc.emu_start(CODE, CODE + len(raw))
    insn = decode(raw, CODE)
    SENSITIVE[insn.mnemonic](fake, insn)
    return uc, fake


# The access byte by its fields, so every type meets every DPL (P, DPL, S, type).
ACCESS = st.builds(lambda present, dpl, segment, kind: present << 7 | dpl << 5 | segment << 4 | kind,
                   st.booleans(), st.integers(0, 3), st.booleans(), st.integers(0, 15))
DESCRIPTOR = st.builds(
    lambda base, limit, access, flags: encode_segment(base, limit, access, flags),
    st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFF), ACCESS, st.sampled_from([0, 4, 8, 0xC]))
# Mostly the drawn entries, at every RPL; sometimes null, the LDT, or far beyond the table.
DRAWN_SELECTOR = st.builds(lambda index, rpl: index << 3 | rpl, st.integers(3, ENTRIES - 1), st.integers(0, 3))
SELECTOR = st.one_of(DRAWN_SELECTOR, DRAWN_SELECTOR, DRAWN_SELECTOR, st.integers(0, 0xFFFF))
LIMIT = st.one_of(st.just(ENTRIES - 1), st.just(ENTRIES - 1), st.integers(2, ENTRIES - 1))   # entries - 1
FLAGS = st.integers(0, 0x8D5).map(lambda f: (f & 0x8D5) | 0x2)


@settings(max_examples=500, deadline=None)
@given(st.lists(DESCRIPTOR, min_size=ENTRIES - 3, max_size=ENTRIES - 3), SELECTOR,
       st.sampled_from(["lar eax, ebx", "lsl eax, ebx", "verr bx", "verw bx", "lar ax, bx", "lsl ax, bx"]),
       LIMIT, FLAGS)
def test_lar_lsl_verr_verw_match_the_cpu_at_ring_0(drawn, selector, code, limit_entries, eflags):
    gdt = [0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)] + drawn
    gdt_limit = (limit_entries + 1) * 8 - 1
    uc, fake = both(gdt, gdt_limit, eflags, {"eax": 0xDEADBEEF, "ebx": selector}, code)
    assert fake.regs["eax"] == uc.reg_read(X.UC_X86_REG_EAX), (hex(selector), code)
    assert fake.eflags & 0x40 == uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x40, (hex(selector), code)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0x3FFFFF), st.sampled_from(["popfd", "popf"]), FLAGS, st.booleans(), st.integers(0, 3))
def test_popf_at_ring_0_loads_what_the_cpu_loads(value, code, eflags, interrupts, iopl):
    eflags |= (0x200 if interrupts else 0) | (iopl << 12)
    uc = machine([0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)], 0x17, eflags, {}, code)
    uc.mem_write(STACK, struct.pack("<I", value))
    fake = Fake(uc, [], 0x17)
    raw = bytes(_ks.asm(code, CODE)[0])
    uc.emu_start(CODE, CODE + len(raw))
    SENSITIVE[decode(raw, CODE).mnemonic](fake, decode(raw, CODE))
    real = uc.reg_read(X.UC_X86_REG_EFLAGS)
    assert visible_eflags(fake) & ~0x10000 == real & ~0x10000, (hex(value), code)
    assert fake.regs["esp"] == uc.reg_read(X.UC_X86_REG_ESP)
    assert fake.interrupts_enabled == (not interrupts and bool(real & 0x200))


@settings(max_examples=100, deadline=None)
@given(FLAGS, st.booleans(), st.integers(0, 3), st.sampled_from(["pushfd", "pushf"]))
def test_pushf_pushes_what_the_cpu_pushes(eflags, interrupts, iopl, code):
    eflags |= (0x200 if interrupts else 0) | (iopl << 12)
    uc, fake = both([0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)], 0x17, eflags, {}, code)
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    assert fake.regs["esp"] == esp
    assert fake.memory[esp:STACK] == uc.mem_read(esp, STACK - esp)


def test_table_and_control_register_stores_and_segment_reads_match_the_cpu():
    gdt = [0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)]
    for code in ("sgdt [0x4000]", "sidt [0x4000]", "smsw eax", "smsw word ptr [0x4000]", "smsw ax",
                 "str eax", "str ax", "str word ptr [0x4000]", "sldt eax", "sldt word ptr [0x4000]",
                 "mov eax, cs", "mov ax, ss", "mov word ptr [0x4000], cs", "push cs", "push ss",
                 ):
        uc, fake = both(gdt, 0x17, 0x2, {"eax": 0x12345678}, code)
        assert fake.regs["eax"] == uc.reg_read(X.UC_X86_REG_EAX), code
        assert fake.regs["esp"] == uc.reg_read(X.UC_X86_REG_ESP), code
        assert fake.memory[DATA:DATA + 8] == uc.mem_read(DATA, 8), code
        esp = uc.reg_read(X.UC_X86_REG_ESP)
        assert fake.memory[esp:STACK] == uc.mem_read(esp, STACK - esp), code
