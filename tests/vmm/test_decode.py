"""The decoder gives typed operands (Reg, Imm, Mem) that an emulator reads by name, never by position."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.vmm.decode import MAX_INSN, Imm, Instruction, Mem, Reg, decode

AT = 0x00101000


def insn(code: str) -> Instruction:
    decoded = decode(bytes.fromhex(code), AT)
    assert decoded is not None, code
    return decoded


@pytest.mark.parametrize("code, operands", [
    ("0f22c0", (Reg("cr0", 4), Reg("eax", 4))),          # mov cr0, eax
    ("0f20d9", (Reg("ecx", 4), Reg("cr3", 4))),          # mov ecx, cr3
    ("0f23fa", (Reg("dr7", 4), Reg("edx", 4))),          # mov dr7, edx
    ("0f21f0", (Reg("eax", 4), Reg("dr6", 4))),          # mov eax, dr6
])
def test_mov_to_and_from_control_and_debug_registers_are_two_registers(code, operands):
    decoded = insn(code)
    assert decoded.mnemonic == "mov"
    assert decoded.operands == operands


def test_lgdt_operand_is_a_six_byte_memory_operand():
    decoded = insn("0f0150 08")                          # lgdt [eax + 8]
    assert decoded.mnemonic == "lgdt"
    assert decoded.operands == (Mem(None, "eax", None, 1, 8, 6),)
    assert decoded.prefixes == ()


def test_a_0x66_prefix_is_listed_among_the_prefixes():
    decoded = insn("660f0118")                           # lidt [eax], 16-bit operand size
    assert decoded.mnemonic == "lidt"
    assert 0x66 in decoded.prefixes
    assert decoded.operands[0].size == 6


def test_far_jump_ptr16_32_is_two_immediates_selector_first():
    decoded = insn("ea78563412 7000")                    # ljmp 0x70:0x12345678
    assert decoded.mnemonic == "ljmp"
    assert decoded.operands == (Imm(0x70, 2), Imm(0x12345678, 4))
    assert decoded.size == 7


def test_far_jump_through_memory_is_an_m16_32_operand():
    decoded = insn("ff28")                               # jmp far [eax]
    assert decoded.operands == (Mem(None, "eax", None, 1, 0, 6),)


@pytest.mark.parametrize("code, mnemonic", [("16", "push"), ("17", "pop")])
def test_push_and_pop_ss_name_the_segment_register(code, mnemonic):
    decoded = insn(code)
    assert decoded.mnemonic == mnemonic
    assert decoded.operands == (Reg("ss", 2),)


def test_mov_ss_names_the_segment_register_and_its_source():
    assert insn("8ed0").operands == (Reg("ss", 2), Reg("eax", 4))


@pytest.mark.parametrize("code, segment", [
    ("8b4424 04", "ss"),             # [esp + 4]
    ("8b45 f8", "ss"),               # [ebp - 8]
    ("8b04 ac", "ss"),               # [esp + ebp*4]: the base decides, not the index
    ("8b04 70", "ds"),               # [eax + esi*2]
    ("8b04 2e", "ds"),               # [esi + ebp]: EBP as an index does not make it SS
    ("8b05 00100000", "ds"),         # [0x1000]
    ("8b00", "ds"),                  # [eax]
])
def test_default_segment_is_ss_for_esp_and_ebp_bases_and_ds_otherwise(code, segment):
    mem = insn(code).operands[1]
    assert isinstance(mem, Mem)
    assert mem.segment is None
    assert mem.default_segment == segment


@pytest.mark.parametrize("prefix, segment", [("26", "es"), ("2e", "cs"), ("36", "ss"), ("3e", "ds"),
                                             ("64", "fs"), ("65", "gs")])
def test_a_segment_override_is_the_operands_segment(prefix, segment):
    mem = insn(prefix + "8b00").operands[1]
    assert mem.segment == segment


def test_ss_override_on_an_ebp_base_still_defaults_to_ss_and_ds_override_wins_over_it():
    mem = insn("3e8b45 00").operands[1]                  # mov eax, ds:[ebp]
    assert (mem.segment, mem.default_segment) == ("ds", "ss")
    assert (mem.segment or mem.default_segment) == "ds"


REGS = {"eax": 0x1000, "ebx": 0x20, "esi": 0x3, "ebp": 0xFFFFFFF0, "esp": 0x7000}


@pytest.mark.parametrize("code, offset", [
    ("8b00", 0x1000),                                    # [eax]
    ("8b44b0 10", 0x1000 + 0x3 * 4 + 0x10),              # [eax + esi*4 + 0x10]
    ("8b45 f8", 0xFFFFFFE8),                             # [ebp - 8]
    ("8b45 20", 0x10),                                   # [ebp + 0x20] wraps at 4 GiB
    ("8b05 78563412", 0x12345678),                       # [0x12345678]
    ("8b4424 fc", 0x6FFC),                               # [esp - 4]
])
def test_offset_is_base_plus_index_times_scale_plus_disp_modulo_4_gib(code, offset):
    mem = insn(code).operands[1]
    assert mem.offset(REGS.__getitem__) == offset


def test_offset_reads_only_the_registers_the_operand_names():
    seen = []
    mem = insn("8b44b0 10").operands[1]
    mem.offset(lambda name: seen.append(name) or REGS[name])
    assert sorted(seen) == ["eax", "esi"]


def test_immediate_operands_are_unsigned_32_bit_values():
    decoded = insn("6a ff")                              # push -1
    assert decoded.operands == (Imm(0xFFFFFFFF, 4),)


def test_an_instruction_knows_its_address_size_bytes_and_text():
    decoded = insn("0f20c0")
    assert (decoded.address, decoded.size, decoded.raw) == (AT, 3, bytes.fromhex("0f20c0"))
    assert decoded.text == "mov eax, cr0"
    assert insn("fa").text == "cli"


def test_bytes_that_are_not_an_instruction_decode_to_none():
    assert decode(b"\x0f\x0b"[:1], AT) is None           # a lone two-byte escape
    assert decode(b"", AT) is None


def test_only_the_first_instruction_is_decoded():
    decoded = insn("fa fb f4")
    assert decoded.mnemonic == "cli" and decoded.size == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=MAX_INSN), st.integers(0, 0xFFFFFFFF))
def test_decode_of_any_bytes_is_an_instruction_within_them_or_none(code, address):
    decoded = decode(code, address)
    if decoded is None:
        return
    assert decoded.address == address
    assert 1 <= decoded.size <= len(code)
    assert decoded.raw == code[:decoded.size]
    for op in decoded.operands:
        assert isinstance(op, (Reg, Imm, Mem))
        if isinstance(op, Imm):
            assert 0 <= op.value <= 0xFFFFFFFF
