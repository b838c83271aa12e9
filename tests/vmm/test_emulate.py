"""The emulator checks what the CPU checks, changes only virtual state, and tells the technique.

Every test runs ``vmm/emulate.py`` on a ``FakeGuest``: an ``Emulated`` with no CPU behind it
(registers in a dict, memory a flat buffer addressed linearly, every notification recorded).
Instructions come from the real decoder, so the operands are the ones a trap would hand over.
"""
from __future__ import annotations

import copy
import struct

import pytest

from hypervisor.machine.descriptors import decode_descriptor, encode_segment
from hypervisor.machine.faults import GuestFault
from hypervisor.machine.interrupts import GP, NP, PF, UD
from hypervisor.vmm.decode import Mem, Reg, decode
from hypervisor.vmm.emulate import (CR4_DE, EMULATORS, Emulated, MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP,
                                    TRANSFERS, Unemulated)
from hypervisor.vmm.exits import ExitReason
from hypervisor.vmm.vcpu import VirtualCpu

WIDE = {"ax": "eax", "bx": "ebx", "cx": "ecx", "dx": "edx", "sp": "esp", "bp": "ebp", "si": "esi", "di": "edi"}
MEMORY = 0x10000
TRANSFER_CALLS = {"iret", "retf", "sysenter_transfer", "sysexit_transfer"}
LDT_SELECTOR, DATA_SELECTOR, ABSENT_LDT_SELECTOR = 0x30, 0x10, 0x38


class FakeGuest:
    """An ``Emulated`` without a CPU: what the emulator may touch, and a log of what it did."""

    def __init__(self, cpl: int = 0, iopl: int = 0, **registers: int):
        self.vcpu = VirtualCpu(cpl=cpl, iopl=iopl)
        self.regs = dict.fromkeys(("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"), 0)
        self.regs["esp"] = 0x8000
        self.regs.update(registers)
        self.memory = bytearray(MEMORY)
        self.bases: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.written: list[str] = []
        self.refuse_stack_segment = False
        self.gdt = {DATA_SELECTOR: encode_segment(0, 0xFFFFF, 0x92),
                    LDT_SELECTOR: encode_segment(0x5000, 0x7F, 0x82, 0),
                    ABSENT_LDT_SELECTOR: encode_segment(0x5000, 0x7F, 0x02, 0)}

    # -- state --------------------------------------------------------------------------
    def read_register(self, name: str) -> int:
        if name in WIDE:
            return self.regs[WIDE[name]] & 0xFFFF
        return self.regs[name]

    def write_register(self, name: str, value: int) -> None:
        assert name in self.regs, f"the emulator wrote {name!r}, not a general register"
        self.written.append(name)
        self.regs[name] = value & 0xFFFFFFFF

    def operand_value(self, op, size: int = 4) -> int:
        mask = (1 << (8 * size)) - 1
        if isinstance(op, Reg):
            return self.read_register(op.name) & mask
        if isinstance(op, Mem):
            return int.from_bytes(self.read_linear(self.effective_address(op), size), "little")
        return op.value & mask

    def effective_address(self, mem: Mem) -> int:
        return (mem.offset(self.read_register) + self.segment_base(mem.segment or mem.default_segment)) & 0xFFFFFFFF

    def segment_base(self, segment: str) -> int:
        return self.bases.get(segment, 0)

    def read_linear(self, address: int, length: int) -> bytes:
        if address + length > MEMORY:
            raise GuestFault(PF, 0, cr2=address, why="not mapped in the fake")
        return bytes(self.memory[address:address + length])

    def gdt_descriptor(self, selector: int):
        if selector & 4 or selector & 0xFFF8 not in self.gdt:
            raise GuestFault(GP, selector & 0xFFFC, why="not in the fake's GDT")
        return decode_descriptor(self.gdt[selector & 0xFFF8])

    # -- notifications --------------------------------------------------------------------
    def gdt_loaded(self) -> None:
        self.calls.append(("gdt_loaded",))

    def load_task_register(self, selector: int) -> None:
        self.calls.append(("load_task_register", selector))

    def load_stack_segment(self, selector: int) -> None:
        if self.refuse_stack_segment:
            raise GuestFault(GP, selector & 0xFFFC, why="refused by the fake")
        self.calls.append(("load_stack_segment", selector))

    def control_register_written(self, n: int, old: int, value: int) -> None:
        self.calls.append(("control_register_written", n, old, value))

    def invalidate_page(self, linear: int) -> None:
        self.calls.append(("invalidate_page", linear))

    def load_ldt(self, selector: int, descriptor) -> None:
        self.vcpu.ldtr = selector
        self.calls.append(("load_ldt", selector))

    def interrupt_flag_set(self) -> None:
        self.calls.append(("interrupt_flag_set",))

    def iret(self, insn) -> None:
        self.calls.append(("iret",))

    def retf(self, insn) -> None:
        self.calls.append(("retf",))

    def sysenter_transfer(self) -> None:
        self.calls.append(("sysenter_transfer",))

    def sysexit_transfer(self) -> None:
        self.calls.append(("sysexit_transfer",))

    @property
    def notified(self) -> list[str]:
        return [c[0] for c in self.calls]


def emulate(m: FakeGuest, code: str):
    insn = decode(bytes.fromhex(code), 0x1000)
    assert insn is not None, code
    return EMULATORS[insn.mnemonic](m, insn)


def assert_fault(excinfo, vector: int, error_code: int | None) -> None:
    assert (excinfo.value.vector, excinfo.value.error_code) == (vector, error_code)


def test_the_fake_provides_everything_the_emulated_interface_names():
    names = {n for n in vars(Emulated) if not n.startswith("_")} | set(Emulated.__annotations__)
    fake = FakeGuest()
    assert names and all(hasattr(fake, n) for n in names), names - {n for n in names if hasattr(fake, n)}


# == privilege ==================================================================================
# One form of every instruction that needs CPL 0, with what it needs to succeed there.
CPL0_ONLY = {
    "hlt": "f4",
    "mov cr0, eax": "0f22c0",
    "mov eax, cr3": "0f20d8",
    "mov dr7, eax": "0f23f8",
    "mov eax, dr7": "0f21f8",
    "lgdt [eax]": "0f0110",
    "lidt [eax]": "0f0118",
    "lldt ax": "0f00d0",
    "ltr ax": "0f00d8",
    "lmsw ax": "0f01f0",
    "clts": "0f06",
    "invlpg [eax]": "0f0138",
    "rdmsr": "0f32",
    "wrmsr": "0f30",
    "wbinvd": "0f09",
    "invd": "0f08",
    "sysexit": "0f35",
}
# Checked by their own rule, not CPL 0: cli/sti (IOPL), sysenter (any ring), and the segment
# loads and iret, which the technique checks against the descriptor.
OWN_RULE = {"cli", "sti", "sysenter", "pop", "iret", "iretd", "retf", "mov"}


def cpl0_guest(cpl: int = 0) -> FakeGuest:
    m = FakeGuest(cpl=cpl, eax=LDT_SELECTOR, ecx=MSR_SYSENTER_ESP)
    m.vcpu.msrs[MSR_SYSENTER_CS] = 0x08
    return m


def test_every_emulated_mnemonic_has_a_privilege_test():
    mnemonics = {decode(bytes.fromhex(code), 0).mnemonic for code in CPL0_ONLY.values()}
    assert mnemonics | OWN_RULE == set(EMULATORS)


@pytest.mark.parametrize("cpl", [1, 2, 3])
@pytest.mark.parametrize("name", CPL0_ONLY)
def test_privileged_instruction_above_cpl0_is_gp0_and_changes_nothing(name, cpl):
    m = cpl0_guest(cpl)
    before, regs = copy.deepcopy(m.vcpu), dict(m.regs)
    with pytest.raises(GuestFault) as e:
        emulate(m, CPL0_ONLY[name])
    assert_fault(e, GP, 0)
    assert m.vcpu == before and m.regs == regs and m.calls == []


@pytest.mark.parametrize("name", CPL0_ONLY)
def test_privileged_instruction_at_cpl0_is_emulated(name):
    m = cpl0_guest(0)
    reason, why = emulate(m, CPL0_ONLY[name])
    assert isinstance(reason, ExitReason) and why


@pytest.mark.parametrize("cpl", range(4))
@pytest.mark.parametrize("iopl", range(4))
def test_cli_is_allowed_exactly_when_cpl_is_at_most_iopl(cpl, iopl):
    m = FakeGuest(cpl=cpl, iopl=iopl)
    m.vcpu.iflag = True
    if cpl <= iopl:
        assert emulate(m, "fa")[0] is ExitReason.INTERRUPT_FLAG
        assert m.vcpu.iflag is False
    else:
        with pytest.raises(GuestFault) as e:
            emulate(m, "fa")
        assert_fault(e, GP, 0)
        assert m.vcpu.iflag is True


@pytest.mark.parametrize("cpl", range(4))
@pytest.mark.parametrize("iopl", range(4))
def test_sti_is_allowed_exactly_when_cpl_is_at_most_iopl_and_notifies_the_technique(cpl, iopl):
    m = FakeGuest(cpl=cpl, iopl=iopl)
    if cpl <= iopl:
        assert emulate(m, "fb")[0] is ExitReason.INTERRUPT_FLAG
        assert m.vcpu.iflag is True
        assert m.calls == [("interrupt_flag_set",)]
    else:
        with pytest.raises(GuestFault) as e:
            emulate(m, "fb")
        assert_fault(e, GP, 0)
        assert m.vcpu.iflag is False and m.calls == []


def test_ring3_cli_with_iopl3_is_allowed_and_with_iopl0_is_gp0():
    allowed = FakeGuest(cpl=3, iopl=3)
    allowed.vcpu.iflag = True
    emulate(allowed, "fa")
    assert allowed.vcpu.iflag is False
    refused = FakeGuest(cpl=3, iopl=0)
    with pytest.raises(GuestFault) as e:
        emulate(refused, "fa")
    assert_fault(e, 13, 0)


# == control and debug registers ==================================================================
MISSING_CR = {1: ("0f20c8", "0f22c8"), 5: ("0f20e8", "0f22e8"), 6: ("0f20f0", "0f22f0"), 7: ("0f20f8", "0f22f8")}


@pytest.mark.parametrize("direction", [0, 1], ids=["from", "to"])
@pytest.mark.parametrize("n", MISSING_CR)
def test_a_control_register_the_cpu_lacks_is_ud_at_cpl0(n, direction):
    m = FakeGuest(cpl=0, eax=0x1234)
    before = copy.deepcopy(m.vcpu)
    with pytest.raises(GuestFault) as e:
        emulate(m, MISSING_CR[n][direction])
    assert e.value.vector == UD
    assert m.vcpu == before and m.regs["eax"] == 0x1234 and m.calls == []


@pytest.mark.parametrize("cpl", [1, 2, 3])
@pytest.mark.parametrize("direction", [0, 1], ids=["from", "to"])
@pytest.mark.parametrize("n", MISSING_CR)
def test_a_control_register_the_cpu_lacks_is_gp0_above_cpl0(n, direction, cpl):
    with pytest.raises(GuestFault) as e:
        emulate(FakeGuest(cpl=cpl), MISSING_CR[n][direction])
    assert_fault(e, GP, 0)


@pytest.mark.parametrize("n, to_cr, from_cr", [(0, "0f22c0", "0f20c0"), (2, "0f22d0", "0f20d0"),
                                               (3, "0f22d8", "0f20d8"), (4, "0f22e0", "0f20e0")])
def test_mov_to_a_control_register_writes_the_virtual_one_and_mov_from_reads_it_back(n, to_cr, from_cr):
    m = FakeGuest(eax=0x00011031)
    old = m.vcpu.control_register(n)
    assert emulate(m, to_cr)[0] is ExitReason.CR_ACCESS
    assert m.vcpu.control_register(n) == 0x00011031
    assert m.calls == [("control_register_written", n, old, 0x00011031)]
    m.regs["eax"] = 0
    emulate(m, from_cr)
    assert m.regs["eax"] == 0x00011031


@pytest.mark.parametrize("code, alias", [("0f23e0", 6), ("0f23e8", 7)], ids=["dr4", "dr5"])
def test_mov_to_dr4_and_dr5_write_dr6_and_dr7_without_cr4_de(code, alias):
    m = FakeGuest(eax=0xABCD)
    emulate(m, code)
    assert m.vcpu.dr[alias] == 0xABCD
    assert m.vcpu.dr[alias - 2] == 0


@pytest.mark.parametrize("code, alias", [("0f21e0", 6), ("0f21e8", 7)], ids=["dr4", "dr5"])
def test_mov_from_dr4_and_dr5_read_dr6_and_dr7_without_cr4_de(code, alias):
    m = FakeGuest()
    m.vcpu.dr[alias] = 0x5555
    emulate(m, code)
    assert m.regs["eax"] == 0x5555


@pytest.mark.parametrize("code", ["0f23e0", "0f23e8", "0f21e0", "0f21e8"])
def test_dr4_and_dr5_are_ud_with_cr4_de(code):
    m = FakeGuest(eax=0xABCD)
    m.vcpu.cr4 = CR4_DE
    dr = list(m.vcpu.dr)
    with pytest.raises(GuestFault) as e:
        emulate(m, code)
    assert e.value.vector == UD
    assert m.vcpu.dr == dr and m.regs["eax"] == 0xABCD


@pytest.mark.parametrize("code", ["0f23e0", "0f21e8"])
def test_dr4_above_cpl0_is_gp0_before_the_cr4_de_check(code):
    m = FakeGuest(cpl=3)
    m.vcpu.cr4 = CR4_DE
    with pytest.raises(GuestFault) as e:
        emulate(m, code)
    assert_fault(e, GP, 0)


def test_mov_to_dr0_to_dr3_and_dr7_each_write_their_own_register():
    for n, code in enumerate(("0f23c0", "0f23c8", "0f23d0", "0f23d8")):
        m = FakeGuest(eax=0x1000 + n)
        emulate(m, code)
        assert m.vcpu.dr[n] == 0x1000 + n


@pytest.mark.parametrize("cr0, ax, expected", [
    (0x00000011, 0x0000, 0x00000011),    # PE stays set: lmsw cannot clear it
    (0x00000010, 0x0001, 0x00000011),    # ... but can set it
    (0x80000011, 0x000E, 0x8000001F),    # MP, EM, TS from the operand; PG and ET untouched
    (0x8000001F, 0xFFF1, 0x80000011),    # only the low four bits are loaded
])
def test_lmsw_loads_pe_mp_em_ts_and_cannot_clear_pe(cr0, ax, expected):
    m = FakeGuest(eax=ax)
    m.vcpu.cr0 = cr0
    assert emulate(m, "0f01f0")[0] is ExitReason.CR_ACCESS
    assert m.vcpu.cr0 == expected
    assert m.calls == [("control_register_written", 0, cr0, expected)]


def test_lmsw_reads_a_memory_operand_as_a_word():
    m = FakeGuest(eax=0x300)
    m.memory[0x300:0x302] = b"\x0e\xff"
    m.vcpu.cr0 = 0x11
    emulate(m, "0f0130")                        # lmsw word ptr [eax]
    assert m.vcpu.cr0 == 0x1F


def test_clts_clears_only_cr0_ts():
    m = FakeGuest()
    m.vcpu.cr0 = 0x8000001F
    emulate(m, "0f06")
    assert m.vcpu.cr0 == 0x80000017


# == MSRs =======================================================================================
def test_wrmsr_keeps_sysenter_cs_to_16_bits():
    m = FakeGuest(ecx=MSR_SYSENTER_CS, edx=0x1234, eax=0xABCD0008)
    assert emulate(m, "0f30")[0] is ExitReason.WRMSR
    assert m.vcpu.msrs[MSR_SYSENTER_CS] == 0x0008


@pytest.mark.parametrize("msr", [MSR_SYSENTER_ESP, MSR_SYSENTER_EIP, 0xC0000080])
def test_wrmsr_keeps_all_64_bits_of_other_msrs(msr):
    m = FakeGuest(ecx=msr, edx=0x1234, eax=0xABCD0008)
    emulate(m, "0f30")
    assert m.vcpu.msrs[msr] == 0x00001234ABCD0008


def test_rdmsr_returns_edx_eax_and_reads_an_unknown_msr_as_zero():
    m = FakeGuest(ecx=MSR_SYSENTER_ESP)
    m.vcpu.msrs[MSR_SYSENTER_ESP] = 0x89ABCDEF_01234567
    assert emulate(m, "0f32")[0] is ExitReason.RDMSR
    assert (m.regs["edx"], m.regs["eax"]) == (0x89ABCDEF, 0x01234567)
    m.regs.update(ecx=0x1FF, eax=1, edx=1)
    emulate(m, "0f32")
    assert (m.regs["edx"], m.regs["eax"]) == (0, 0)


# == descriptor-table registers ====================================================================
def put_pseudo_descriptor(m: FakeGuest, at: int, limit: int, base: int) -> None:
    m.memory[at:at + 6] = struct.pack("<HI", limit, base)


def test_lgdt_loads_a_32_bit_base_and_the_limit_and_rebuilds_the_shadow():
    m = FakeGuest(eax=0x200)
    m.bases["ds"] = 0x100                       # the operand goes through DS
    put_pseudo_descriptor(m, 0x300, 0x2F, 0x12345678)
    assert emulate(m, "0f0110")[0] is ExitReason.GDTR_IDTR_ACCESS
    assert (m.vcpu.gdt_base, m.vcpu.gdt_limit) == (0x12345678, 0x2F)
    assert m.calls == [("gdt_loaded",)]


def test_lgdt_with_a_0x66_prefix_takes_a_24_bit_base():
    m = FakeGuest(eax=0x300)
    put_pseudo_descriptor(m, 0x300, 0x2F, 0x12345678)
    emulate(m, "660f0110")
    assert (m.vcpu.gdt_base, m.vcpu.gdt_limit) == (0x00345678, 0x2F)


@pytest.mark.parametrize("code, base", [("0f0118", 0x12345678), ("660f0118", 0x00345678)])
def test_lidt_loads_the_idtr_and_leaves_the_gdt_alone(code, base):
    m = FakeGuest(eax=0x300)
    put_pseudo_descriptor(m, 0x300, 0x7FF, 0x12345678)
    emulate(m, code)
    assert (m.vcpu.idt_base, m.vcpu.idt_limit) == (base, 0x7FF)
    assert (m.vcpu.gdt_base, m.vcpu.gdt_limit) == (0, 0) and m.calls == []


@pytest.mark.parametrize("code", ["0f0110", "0f0118"], ids=["lgdt", "lidt"])
def test_a_fault_reading_the_table_operand_is_the_guests_and_changes_nothing(code):
    m = FakeGuest(eax=MEMORY - 2)
    before = copy.deepcopy(m.vcpu)
    with pytest.raises(GuestFault) as e:
        emulate(m, code)
    assert (e.value.vector, e.value.cr2) == (PF, MEMORY - 2)
    assert m.vcpu == before and m.calls == []


def test_lldt_of_an_ldt_descriptor_records_the_selector_in_the_virtual_ldtr():
    m = FakeGuest(eax=0xFFFF0000 | LDT_SELECTOR)
    assert emulate(m, "0f00d0")[0] is ExitReason.LDTR_TR_ACCESS
    assert m.vcpu.ldtr == LDT_SELECTOR


@pytest.mark.parametrize("selector", [0, 3])
def test_lldt_of_a_null_selector_empties_the_ldtr_without_looking_at_the_gdt(selector):
    m = FakeGuest(eax=selector)
    m.vcpu.ldtr = LDT_SELECTOR
    m.gdt.clear()
    emulate(m, "0f00d0")
    assert m.vcpu.ldtr == selector


@pytest.mark.parametrize("selector, vector", [(DATA_SELECTOR, GP), (ABSENT_LDT_SELECTOR, NP), (0x48, GP)],
                         ids=["data-segment", "not-present", "beyond-the-gdt"])
def test_lldt_of_anything_but_a_present_ldt_descriptor_faults_naming_the_selector(selector, vector):
    m = FakeGuest(eax=selector)
    with pytest.raises(GuestFault) as e:
        emulate(m, "0f00d0")
    assert_fault(e, vector, selector)
    assert m.vcpu.ldtr == 0


def test_ltr_hands_the_selector_to_the_technique():
    m = FakeGuest(eax=0xFFFF0028)
    assert emulate(m, "0f00d8")[0] is ExitReason.LDTR_TR_ACCESS
    assert m.calls == [("load_task_register", 0x28)]


# == segment loads ==================================================================================
def test_mov_ss_hands_the_selector_to_the_technique():
    m = FakeGuest(eax=0xFFFF0010)
    assert emulate(m, "8ed0")[0] is ExitReason.SEGMENT_LOAD
    assert m.calls == [("load_stack_segment", 0x10)]


def test_pop_ss_reads_the_word_at_ss_esp_loads_it_and_pops_four_bytes():
    m = FakeGuest(esp=0x1000)
    m.bases["ss"] = 0x2000
    m.memory[0x3000:0x3004] = b"\x10\x00\xff\xff"
    assert emulate(m, "17")[0] is ExitReason.SEGMENT_LOAD
    assert m.calls == [("load_stack_segment", 0x10)]
    assert m.regs["esp"] == 0x1004


def test_a_refused_pop_ss_leaves_esp_where_it_was():
    m = FakeGuest(esp=0x1000)
    m.memory[0x1000:0x1002] = b"\x13\x00"
    m.refuse_stack_segment = True
    with pytest.raises(GuestFault):
        emulate(m, "17")
    assert m.regs["esp"] == 0x1000


@pytest.mark.parametrize("code", ["89d8", "8ed8", "58", "1f"], ids=["mov eax,ebx", "mov ds,eax", "pop eax", "pop ds"])
def test_instructions_the_emulator_does_not_virtualise_are_left_to_the_guest(code):
    with pytest.raises(Unemulated):
        emulate(FakeGuest(), code)


# == sysenter / sysexit ===============================================================================
@pytest.mark.parametrize("cs", [0, 3])
@pytest.mark.parametrize("cpl", [0, 3])
def test_sysenter_with_a_null_sysenter_cs_is_gp0(cs, cpl):
    m = FakeGuest(cpl=cpl)
    m.vcpu.msrs[MSR_SYSENTER_CS] = cs
    with pytest.raises(GuestFault) as e:
        emulate(m, "0f34")
    assert_fault(e, GP, 0)
    assert m.calls == []


def test_sysenter_with_no_sysenter_cs_written_is_gp0():
    with pytest.raises(GuestFault) as e:
        emulate(FakeGuest(cpl=3), "0f34")
    assert_fault(e, GP, 0)


@pytest.mark.parametrize("cpl", range(4))
def test_sysenter_from_any_ring_is_performed_by_the_technique(cpl):
    m = FakeGuest(cpl=cpl)
    m.vcpu.msrs[MSR_SYSENTER_CS] = 0x08
    assert emulate(m, "0f34")[0] is ExitReason.SYSTEM_CALL
    assert m.calls == [("sysenter_transfer",)]


@pytest.mark.parametrize("cpl", [1, 2, 3])
def test_sysexit_above_cpl0_is_gp0(cpl):
    m = FakeGuest(cpl=cpl)
    m.vcpu.msrs[MSR_SYSENTER_CS] = 0x08
    with pytest.raises(GuestFault) as e:
        emulate(m, "0f35")
    assert_fault(e, GP, 0)
    assert m.calls == []


def test_sysexit_with_a_null_sysenter_cs_is_gp0():
    with pytest.raises(GuestFault) as e:
        emulate(FakeGuest(cpl=0), "0f35")
    assert_fault(e, GP, 0)


def test_sysexit_at_cpl0_is_performed_by_the_technique():
    m = FakeGuest(cpl=0)
    m.vcpu.msrs[MSR_SYSENTER_CS] = 0x08
    assert emulate(m, "0f35")[0] is ExitReason.SYSTEM_CALL
    assert m.calls == [("sysexit_transfer",)]


# == transfers, and everything else ====================================================================
# One encoding per emulated mnemonic, run at CPL 0 where each succeeds.
ONE_OF_EACH = {**{decode(bytes.fromhex(c), 0).mnemonic: c for c in CPL0_ONLY.values()},
               "cli": "fa", "sti": "fb", "mov": "0f22c0", "pop": "17", "iret": "66cf", "iretd": "cf",
               "retf": "cb", "sysenter": "0f34"}


def test_one_of_each_covers_every_emulated_mnemonic():
    assert set(ONE_OF_EACH) == set(EMULATORS)


@pytest.mark.parametrize("mnemonic", sorted(EMULATORS))
def test_exactly_the_transfers_move_eip_through_the_technique(mnemonic):
    """The dispatcher advances EIP past every emulated instruction except TRANSFERS, whose
    handler hands the guest to the technique (iret, retf, sysenter, sysexit) to resume elsewhere."""
    m = cpl0_guest(0)
    m.memory[0x8000:0x8002] = b"\x10\x00"
    emulate(m, ONE_OF_EACH[mnemonic])
    assert bool(TRANSFER_CALLS & set(m.notified)) == (mnemonic in TRANSFERS)
    assert "eip" not in m.written


def test_handlers_return_a_reason_and_an_explanation_for_the_trace():
    m = cpl0_guest(0)
    m.memory[0x8000:0x8002] = b"\x10\x00"
    for mnemonic, code in ONE_OF_EACH.items():
        reason, why = emulate(m, code)
        assert isinstance(reason, ExitReason) and isinstance(why, str) and why, mnemonic


def test_hlt_only_reports_the_exit_the_technique_idles_the_vcpu():
    m = FakeGuest()
    assert emulate(m, "f4")[0] is ExitReason.HLT
    assert m.calls == [] and m.written == []

