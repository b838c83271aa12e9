"""The VMCS model decides exits as the SDM says, and lays out its fields bit for bit as the SDM does."""
from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.vmm.exits import ExitReason
from hypervisor.vmm.vmcs import (
    ActivityState, Blocking, CrAccess, CrAccessQualification, ExitInfo, Injection, InterruptionType,
    Vmcs, VmcsControls, cr_access_qualification, decode_cr_access, decode_ept_violation,
    decode_interruption_info, decode_io, describe, ept_violation_qualification, interruption_info,
    io_qualification,
)

CR0_PE, CR0_TS, CR0_PG = 1 << 0, 1 << 3, 1 << 31
CR4_PSE = 1 << 4
U32 = st.integers(0, 0xFFFF_FFFF)
HW = InterruptionType.HARDWARE_EXCEPTION


def bool_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(VmcsControls) if f.type == "bool"]


# --- the control words --------------------------------------------------------------

@pytest.mark.parametrize("name, word, bit", [
    ("external_interrupt_exiting", "pin_based", 0),   # Table 24-5
    ("nmi_exiting", "pin_based", 3),
    ("virtual_nmis", "pin_based", 5),
    ("preemption_timer", "pin_based", 6),
    ("interrupt_window_exiting", "primary", 2),       # Table 24-6
    ("hlt_exiting", "primary", 7),
    ("invlpg_exiting", "primary", 9),
    ("rdtsc_exiting", "primary", 12),
    ("cr3_load_exiting", "primary", 15),
    ("cr3_store_exiting", "primary", 16),
    ("cr8_load_exiting", "primary", 19),
    ("cr8_store_exiting", "primary", 20),
    ("nmi_window_exiting", "primary", 22),
    ("mov_dr_exiting", "primary", 23),
    ("unconditional_io_exiting", "primary", 24),
    ("use_io_bitmaps", "primary", 25),
    ("monitor_trap_flag", "primary", 27),
    ("use_msr_bitmaps", "primary", 28),
    ("activate_secondary_controls", "primary", 31),
    ("enable_ept", "secondary", 1),                   # Table 24-7
    ("descriptor_table_exiting", "secondary", 2),
    ("enable_rdtscp", "secondary", 3),
    ("wbinvd_exiting", "secondary", 6),
    ("unrestricted_guest", "secondary", 7),
])
def test_each_control_sets_exactly_its_sdm_bit_in_its_word(name, word, bit):
    words = dataclasses.asdict(VmcsControls(**{name: True}).as_words())
    assert words == {w: (1 << bit if w == word else 0) for w in ("pin_based", "primary", "secondary")}


def test_every_control_field_is_in_a_word_and_in_the_json_by_its_own_name():
    everything = VmcsControls(**{name: True for name in bool_fields()})
    words = everything.as_words()
    assert bin(words.pin_based).count("1") + bin(words.primary).count("1") \
        + bin(words.secondary).count("1") == len(bool_fields())
    doc = everything.as_json()
    named = {**doc["pin_based"], **doc["primary"], **doc["secondary"]}
    assert named == {name: True for name in bool_fields()}


def test_as_json_is_json_and_summarises_the_bitmaps_as_ranges_that_exit():
    c = VmcsControls(hlt_exiting=True, use_io_bitmaps=True, use_msr_bitmaps=True,
                     exception_bitmap=1 << 14 | 1 << 6, cr3_target_values=(0x1000,))
    c.set_io_exiting(0x3F8, 8)
    c.set_io_exiting(0x7FFE, 4)                           # runs from bitmap A into bitmap B
    c.set_msr_exiting(0x174, read=False, write=True)
    c.set_msr_exiting(0xC000_0080, read=True, write=True)
    doc = json.loads(json.dumps(c.as_json()))
    assert doc["io_ports_exiting"] == [[0x3F8, 0x3FF], [0x7FFE, 0x8001]]
    assert doc["msr_reads_exiting"] == [[0xC000_0080, 0xC000_0080]]
    assert doc["msr_writes_exiting"] == [[0x174, 0x174], [0xC000_0080, 0xC000_0080]]
    assert doc["exception_vectors"] == [6, 14]
    assert doc["words"]["primary"] == f"{1 << 7 | 1 << 25 | 1 << 28:#010x}"
    assert doc["cr3_target_values"] == ["0x00001000"]


# --- I/O ------------------------------------------------------------------------------

def test_without_io_bitmaps_unconditional_io_exiting_decides_for_every_port():
    assert not VmcsControls().exits_on_io(0x3F8, 1)
    assert VmcsControls(unconditional_io_exiting=True).exits_on_io(0x80, 4)


def test_with_io_bitmaps_unconditional_io_exiting_is_ignored():
    assert not VmcsControls(use_io_bitmaps=True, unconditional_io_exiting=True).exits_on_io(0x80, 1)


def test_an_access_exits_if_any_of_its_ports_is_trapped():
    c = VmcsControls(use_io_bitmaps=True)
    c.set_io_exiting(0x3F8)
    assert c.exits_on_io(0x3F8, 1)
    assert c.exits_on_io(0x3F6, 4)                        # 3f6-3f9 covers 3f8
    assert c.exits_on_io(0x3F7, 2)
    assert not c.exits_on_io(0x3F4, 4)                    # 3f4-3f7
    assert not c.exits_on_io(0x3F9, 1)


def test_an_access_that_wraps_past_ffff_always_exits():
    c = VmcsControls(use_io_bitmaps=True)                 # no port trapped at all
    assert c.exits_on_io(0xFFFF, 2)
    assert c.exits_on_io(0xFFFD, 4)
    assert not c.exits_on_io(0xFFFC, 4)


def test_io_bitmap_a_holds_ports_below_8000_and_b_the_rest_bit_n_in_byte_n_over_8():
    c = VmcsControls()
    c.set_io_exiting(0x3F8)
    c.set_io_exiting(0x8009)
    assert c.io_bitmap_a[0x7F] == 0x01 and sum(c.io_bitmap_a) == 1
    assert c.io_bitmap_b[1] == 0x02 and sum(c.io_bitmap_b) == 2
    c.set_io_exiting(0x8009, exits=False)
    assert not any(c.io_bitmap_b)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_io_decision_equals_a_loop_over_the_accessed_ports_of_the_raw_bitmaps(data):
    trapped = data.draw(st.sets(st.integers(0, 0xFFFF), max_size=12))
    near = [st.integers(max(0, t - 4), min(0xFFFF, t + 1)) for t in trapped]
    port = data.draw(st.one_of(st.integers(0, 0xFFFF), *near))
    size = data.draw(st.sampled_from((1, 2, 4)))
    c = VmcsControls(use_io_bitmaps=True)
    for t in trapped:
        c.set_io_exiting(t)
    # The SDM's view: one 64-Kibit little-endian bitmap, A then B; bit p is port p.
    bits = int.from_bytes(bytes(c.io_bitmap_a + c.io_bitmap_b), "little")
    expected = any(p > 0xFFFF or bits >> p & 1 for p in range(port, port + size))
    assert c.exits_on_io(port, size) == expected


@pytest.mark.parametrize("port, size", [(-1, 1), (0x10000, 1), (0x60, 3)])
def test_an_impossible_io_access_is_refused(port, size):
    with pytest.raises(ValueError):
        VmcsControls().exits_on_io(port, size)


# --- MSRs -----------------------------------------------------------------------------

def test_without_msr_bitmaps_every_rdmsr_and_wrmsr_exits():
    c = VmcsControls()
    assert c.exits_on_msr(0x10, write=False) and c.exits_on_msr(0x10, write=True)


def test_an_msr_outside_both_ranges_always_exits_and_cannot_be_let_through():
    c = VmcsControls(use_msr_bitmaps=True)
    assert not c.exits_on_msr(0x1FFF, write=False)
    assert c.exits_on_msr(0x2000, write=False)
    assert c.exits_on_msr(0xC000_2000, write=True)
    with pytest.raises(ValueError, match="always exits"):
        c.set_msr_exiting(0x4000_0000, read=False, write=False)


@pytest.mark.parametrize("msr, write, byte, bit", [
    (0x10, False, 2, 0),                      # read bitmap for low MSRs at offset 0
    (0xC000_0080, False, 1024 + 16, 0),       # read bitmap for high MSRs at 1024
    (0x174, True, 2048 + 0x2E, 4),            # write bitmap for low MSRs at 2048
    (0xC000_0101, True, 3072 + 32, 1),        # write bitmap for high MSRs at 3072
])
def test_the_four_msr_bitmaps_sit_at_0_1024_2048_3072_of_the_page(msr, write, byte, bit):
    c = VmcsControls(use_msr_bitmaps=True)
    c.set_msr_exiting(msr, read=not write, write=write)
    assert c.msr_bitmaps[byte] == 1 << bit and sum(c.msr_bitmaps) == 1 << bit
    assert c.exits_on_msr(msr, write) and not c.exits_on_msr(msr, not write)


MSRS = st.one_of(st.integers(0, 0x2100), st.integers(0xBFFF_FF00, 0xC000_2100), U32)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF)),
                       st.tuples(st.booleans(), st.booleans()), max_size=10),
       MSRS, st.booleans())
def test_the_msr_decision_equals_the_sdm_rule(configured, msr, write):
    c = VmcsControls(use_msr_bitmaps=True)
    for m, (read_exits, write_exits) in configured.items():
        c.set_msr_exiting(m, read=read_exits, write=write_exits)
    covered = msr <= 0x1FFF or 0xC000_0000 <= msr <= 0xC000_1FFF
    expected = not covered or configured.get(msr, (False, False))[write]
    assert c.exits_on_msr(msr, write) == expected


# --- exceptions -----------------------------------------------------------------------

def test_an_exception_exits_iff_its_bit_is_set():
    c = VmcsControls(exception_bitmap=1 << 13)
    assert c.exits_on_exception(13, 0)
    assert not c.exits_on_exception(6, None)


@pytest.mark.parametrize("bit14, mask, match, error_code, exits", [
    (1, 0, 0, 0x2, True),                     # the SDM's "every page fault"
    (1, 0, 0xFFFF_FFFF, 0x2, False),          # the SDM's "no page fault"
    (1, 0x3, 0x3, 0x3, True),                 # a write to a present page: matches, bit 14 decides
    (1, 0x3, 0x3, 0x2, False),                # a write to a non-present page: reversed
    (0, 0x3, 0x3, 0x2, True),                 # reversed the other way: bit clear, mismatch exits
    (0, 0, 0, 0x7, False),
])
def test_a_page_fault_consults_the_error_code_mask_and_match(bit14, mask, match, error_code, exits):
    c = VmcsControls(exception_bitmap=bit14 << 14, pf_error_code_mask=mask, pf_error_code_match=match)
    assert c.exits_on_exception(14, error_code) is exits


@settings(max_examples=300, deadline=None)
@given(U32, U32, U32, st.integers(0, 31), st.integers(0, 0xFFFF))
def test_the_exception_decision_equals_the_sdm_rule(bitmap, mask, match, vector, error_code):
    c = VmcsControls(exception_bitmap=bitmap, pf_error_code_mask=mask, pf_error_code_match=match)
    bit = bool(bitmap & (1 << vector))
    if vector == 14:
        expected = bit if (error_code & mask) == match else not bit
    else:
        expected = bit
    assert c.exits_on_exception(vector, error_code) == expected


def test_a_vector_above_31_or_a_page_fault_without_error_code_is_refused():
    with pytest.raises(ValueError, match="not an exception"):
        VmcsControls().exits_on_exception(32, None)
    with pytest.raises(ValueError, match="error code"):
        VmcsControls().exits_on_exception(14, None)


# --- control registers ----------------------------------------------------------------

def test_a_cr0_write_exits_iff_a_host_owned_bit_differs_from_the_shadow():
    c = VmcsControls(cr0_guest_host_mask=CR0_PG, cr0_read_shadow=0)
    assert c.exits_on_cr_write(0, 0x8000_0011)            # setting PG: the host owns it
    assert not c.exits_on_cr_write(0, 0x0000_0019)        # TS is the guest's own bit


def test_a_cr_write_compares_with_the_shadow_not_with_the_register():
    # The real CR0 has PG set (the host runs the guest paged), the guest was shown PG clear:
    # writing back the real value is a change the guest did not see coming, so it exits.
    c = VmcsControls(cr0_guest_host_mask=CR0_PG, cr0_read_shadow=0x11)
    assert c.exits_on_cr_write(0, 0x8000_0011)
    assert not c.exits_on_cr_write(0, 0x11)


def test_cr4_has_its_own_mask_and_shadow():
    c = VmcsControls(cr0_guest_host_mask=CR4_PSE, cr4_guest_host_mask=0)
    assert not c.exits_on_cr_write(4, CR4_PSE)
    c.cr4_guest_host_mask = CR4_PSE
    assert c.exits_on_cr_write(4, CR4_PSE)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from((0, 4)), U32, U32, U32)
def test_the_cr0_cr4_write_decision_equals_a_bit_by_bit_reference(n, mask, shadow, value):
    c = VmcsControls(cr0_guest_host_mask=mask, cr0_read_shadow=shadow,
                     cr4_guest_host_mask=mask, cr4_read_shadow=shadow)
    expected = any(mask >> b & 1 and (value >> b & 1) != (shadow >> b & 1) for b in range(32))
    assert c.exits_on_cr_write(n, value) == expected


def test_cr3_loads_exit_under_cr3_load_exiting_except_to_a_cr3_target_value():
    assert not VmcsControls().exits_on_cr_write(3, 0x1000)
    c = VmcsControls(cr3_load_exiting=True, cr3_target_values=(0x5000,))
    assert c.exits_on_cr_write(3, 0x1000)
    assert not c.exits_on_cr_write(3, 0x5000)


def test_cr8_loads_and_stores_have_their_own_controls():
    assert VmcsControls(cr8_load_exiting=True).exits_on_cr_write(8, 0)
    assert not VmcsControls(cr8_store_exiting=True).exits_on_cr_write(8, 0)
    assert VmcsControls(cr8_store_exiting=True).exits_on_cr_read(8)


def test_cr_reads_exit_only_for_cr3_store_exiting_and_cr8_store_exiting():
    everything = VmcsControls(**{name: True for name in bool_fields()}, cr0_guest_host_mask=0xFFFF_FFFF)
    assert not everything.exits_on_cr_read(0) and not everything.exits_on_cr_read(4)
    assert everything.exits_on_cr_read(3)
    assert not VmcsControls().exits_on_cr_read(3)


@pytest.mark.parametrize("n", [1, 5, 9])
def test_a_control_register_that_does_not_exist_is_refused(n):
    with pytest.raises(ValueError):
        VmcsControls().exits_on_cr_write(n, 0)
    with pytest.raises(ValueError):
        VmcsControls().exits_on_cr_read(n)


def test_the_guest_reads_the_shadow_for_host_owned_bits_and_the_register_for_its_own():
    c = VmcsControls(cr0_guest_host_mask=CR0_PG | CR0_PE, cr0_read_shadow=CR0_PE,
                     cr4_guest_host_mask=CR4_PSE, cr4_read_shadow=0)
    assert c.guest_view_cr(0, 0x8000_0019) == 0x19         # PG hidden, TS and ET its own
    assert c.guest_view_cr(4, CR4_PSE | 1) == 1
    assert c.guest_view_cr(3, 0x1234_5000) == 0x1234_5000


def test_clts_exits_iff_ts_is_host_owned_and_set_in_the_shadow():
    assert VmcsControls(cr0_guest_host_mask=CR0_TS, cr0_read_shadow=CR0_TS).exits_on_clts()
    assert not VmcsControls(cr0_guest_host_mask=CR0_TS, cr0_read_shadow=0).exits_on_clts()
    assert not VmcsControls(cr0_guest_host_mask=0, cr0_read_shadow=CR0_TS).exits_on_clts()


@pytest.mark.parametrize("mask, shadow, source, exits", [
    (CR0_PE, 0, CR0_PE, True),                # lmsw would set a host-owned PE the shadow shows clear
    (CR0_PE, CR0_PE, 0, False),               # lmsw cannot clear PE: nothing would change
    (CR0_PE, 0, 0, False),
    (CR0_TS, 0, CR0_TS, True),                # bits 3:1 compare both ways
    (CR0_TS, CR0_TS, 0, True),
    (CR0_PG, 0, 0xF, False),                  # lmsw never reaches bit 31
])
def test_lmsw_exits_by_the_sdm_rule_for_pe_and_for_bits_3_to_1(mask, shadow, source, exits):
    assert VmcsControls(cr0_guest_host_mask=mask, cr0_read_shadow=shadow).exits_on_lmsw(source) is exits


# --- the other instructions -----------------------------------------------------------

def test_hlt_invlpg_rdtsc_and_mov_dr_each_follow_their_control():
    off, on = VmcsControls(), VmcsControls(hlt_exiting=True, invlpg_exiting=True, rdtsc_exiting=True,
                                           mov_dr_exiting=True)
    assert not (off.exits_on_hlt() or off.exits_on_invlpg() or off.exits_on_rdtsc() or off.exits_on_mov_dr())
    assert on.exits_on_hlt() and on.exits_on_invlpg() and on.exits_on_rdtsc() and on.exits_on_mov_dr()


def test_rdtscp_exits_only_when_rdtsc_exiting_and_an_enabled_rdtscp_are_both_in_force():
    assert not VmcsControls(rdtsc_exiting=True).exits_on_rdtsc(rdtscp=True)
    assert not VmcsControls(rdtsc_exiting=True, enable_rdtscp=True).exits_on_rdtsc(rdtscp=True)
    assert VmcsControls(rdtsc_exiting=True, enable_rdtscp=True,
                        activate_secondary_controls=True).exits_on_rdtsc(rdtscp=True)


def test_cpuid_always_exits():
    assert VmcsControls().exits_on_cpuid()


def test_secondary_controls_count_only_while_activated():
    dormant = VmcsControls(wbinvd_exiting=True, descriptor_table_exiting=True, enable_ept=True,
                           unrestricted_guest=True)
    assert not (dormant.exits_on_wbinvd() or dormant.exits_on_descriptor_table()
                or dormant.ept_enabled or dormant.unrestricted)
    dormant.activate_secondary_controls = True
    assert dormant.exits_on_wbinvd() and dormant.exits_on_descriptor_table()
    assert dormant.ept_enabled and dormant.unrestricted


# --- exit qualifications --------------------------------------------------------------

@pytest.mark.parametrize("args, qualification", [
    ((3, CrAccess.MOV_TO_CR, 0), 0x3),                    # mov cr3, eax
    ((3, CrAccess.MOV_FROM_CR, 0), 0x13),                 # mov eax, cr3
    ((0, CrAccess.MOV_TO_CR, 3), 0x300),                  # mov cr0, ebx
    ((4, CrAccess.MOV_TO_CR, 7), 0x704),                  # mov cr4, edi
    ((0, CrAccess.CLTS, None), 0x20),                     # clts
    ((0, CrAccess.LMSW, None, 0x0001), 0x0001_0030),      # lmsw ax, ax = 1
    ((0, CrAccess.LMSW, None, 0x000F, True), 0x000F_0070),  # lmsw [mem]: bit 6, operand type
])
def test_cr_access_qualifications_have_the_sdm_layout(args, qualification):
    assert cr_access_qualification(*args) == qualification


@pytest.mark.parametrize("args", [
    (0, CrAccess.MOV_FROM_CR, 0),             # reads of CR0 never exit: the shadow answers
    (2, CrAccess.MOV_TO_CR, 0),
    (3, CrAccess.MOV_TO_CR, 8),               # no r8 in a 32-bit guest
    (3, CrAccess.MOV_TO_CR, None),
    (3, CrAccess.CLTS, None),
    (0, CrAccess.LMSW, None),
    (0, CrAccess.LMSW, None, 0x10000),
    (0, CrAccess.CLTS, None, 1),
])
def test_a_cr_access_that_cannot_exit_or_is_malformed_is_refused(args):
    with pytest.raises(ValueError):
        cr_access_qualification(*args)


MOV_CR = st.one_of(
    st.builds(CrAccessQualification, st.sampled_from((0, 3, 4, 8)), st.just(CrAccess.MOV_TO_CR),
              st.integers(0, 7), st.none(), st.just(False)),
    st.builds(CrAccessQualification, st.sampled_from((3, 8)), st.just(CrAccess.MOV_FROM_CR),
              st.integers(0, 7), st.none(), st.just(False)),
    st.just(CrAccessQualification(0, CrAccess.CLTS, None, None, False)),
    st.builds(CrAccessQualification, st.just(0), st.just(CrAccess.LMSW), st.none(),
              st.integers(0, 0xFFFF), st.booleans()),
)


@given(MOV_CR)
def test_every_cr_access_qualification_decodes_to_what_was_encoded(q):
    assert decode_cr_access(cr_access_qualification(**dataclasses.asdict(q))) == q


@pytest.mark.parametrize("args, qualification", [
    ((0x3F8, 1, False, False, False, False), 0x03F8_0000),    # out dx, al with dx = 3f8
    ((0x60, 1, True, False, False, True), 0x0060_0048),       # in al, 0x60
    ((0xCF8, 4, False, False, False, False), 0x0CF8_0003),    # out dx, eax
    ((0x1F0, 2, True, True, True, False), 0x01F0_0039),       # rep insw
])
def test_io_qualifications_have_the_sdm_layout(args, qualification):
    assert io_qualification(*args) == qualification


@pytest.mark.parametrize("args", [(0x100, 1, False, False, False, True), (0x60, 1, False, True, False, True),
                                  (0x60, 8, False, False, False, False)])
def test_an_impossible_io_qualification_is_refused(args):
    with pytest.raises(ValueError):
        io_qualification(*args)


@given(st.integers(0, 0xFFFF), st.sampled_from((1, 2, 4)), st.booleans(), st.booleans(), st.booleans(),
       st.booleans())
def test_every_io_qualification_decodes_to_what_was_encoded(port, size, direction_in, string, rep, immediate):
    immediate = immediate and port <= 0xFF and not string
    q = io_qualification(port, size, direction_in, string, rep, immediate)
    assert dataclasses.astuple(decode_io(q)) == (port, size, direction_in, string, rep, immediate)


def test_ept_violation_qualifications_have_the_sdm_layout():
    # A write through a linear address to a page EPT maps read+execute only.
    assert ept_violation_qualification(read=False, write=True, fetch=False, readable=True, writable=False,
                                       executable=True, linear_valid=True, linear_is_translation=True) == 0x1AA
    # A read during the guest's page walk of a guest-physical page EPT does not map.
    assert ept_violation_qualification(read=True, write=False, fetch=False, readable=False, writable=False,
                                       executable=False, linear_valid=True, linear_is_translation=False) == 0x81
    # A fetch: bit 2.
    assert ept_violation_qualification(False, False, True, True, True, False, False, False) == 0x1C


def test_bit_8_of_an_ept_qualification_requires_a_valid_linear_address():
    with pytest.raises(ValueError, match="reserved"):
        ept_violation_qualification(True, False, False, False, False, False, False, True)


@given(st.tuples(*[st.booleans()] * 8))
def test_every_ept_violation_qualification_decodes_to_what_was_encoded(bits):
    read, write, fetch, r, w, x, linear_valid, translation = bits
    if not (read or write or fetch):
        read = True
    translation = translation and linear_valid
    args = (read, write, fetch, r, w, x, linear_valid, translation)
    assert dataclasses.astuple(decode_ept_violation(ept_violation_qualification(*args))) == args


@pytest.mark.parametrize("vector, kind, error_code_valid, info", [
    (13, HW, True, 0x8000_0B0D),                                  # #GP with its error code
    (14, HW, True, 0x8000_0B0E),                                  # #PF
    (6, HW, False, 0x8000_0306),                                  # #UD
    (0x20, InterruptionType.EXTERNAL_INTERRUPT, False, 0x8000_0020),
    (2, InterruptionType.NMI, False, 0x8000_0202),
    (3, InterruptionType.SOFTWARE_EXCEPTION, False, 0x8000_0603),  # int3
    (0x80, InterruptionType.SOFTWARE_INTERRUPT, False, 0x8000_0480),
    (1, InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION, False, 0x8000_0501),  # icebp
])
def test_interruption_information_has_the_sdm_layout(vector, kind, error_code_valid, info):
    assert interruption_info(vector, kind, error_code_valid) == info


@given(st.integers(0, 255), st.sampled_from(list(InterruptionType)), st.booleans())
def test_every_interruption_info_decodes_to_what_was_encoded(vector, kind, error_code_valid):
    event = decode_interruption_info(interruption_info(vector, kind, error_code_valid))
    assert (event.vector, event.kind, event.error_code_valid) == (vector, kind, error_code_valid)


def test_an_interruption_info_without_its_valid_bit_holds_no_event():
    assert decode_interruption_info(0x0000_0B0D) is None


@pytest.mark.parametrize("info, text", [
    (ExitInfo(ExitReason.CR_ACCESS, 0x3), "mov to cr3 from eax"),
    (ExitInfo(ExitReason.CR_ACCESS, 0x13), "mov from cr3 to eax"),
    (ExitInfo(ExitReason.CR_ACCESS, 0x20), "clts"),
    (ExitInfo(ExitReason.CR_ACCESS, 0x0001_0070, guest_linear_address=0x9000),
     "lmsw 0x0001 from memory at 0x9000"),
    (ExitInfo(ExitReason.CR_ACCESS, 0x0001_0030), "lmsw 0x0001 from a register"),
    (ExitInfo(ExitReason.IO_INSTRUCTION, 0x03F8_0000), "out dx 0x3f8, 1 byte"),
    (ExitInfo(ExitReason.IO_INSTRUCTION, 0x01F0_0039), "rep ins dx 0x1f0, 2 bytes"),
    (ExitInfo(ExitReason.EPT_VIOLATION, 0x1AA, guest_physical_address=0xFEE0_0300),
     "write to gpa 0xfee00300: not writable"),
    (ExitInfo(ExitReason.EPT_VIOLATION, 0x81, guest_physical_address=0x5000, guest_linear_address=0xC000_0000),
     "page-walk read from gpa 0x5000 (linear 0xc0000000): not mapped"),
    (ExitInfo(ExitReason.EXCEPTION_NMI, interruption_info=0x8000_0B0E, interruption_error_code=2),
     "#PF page fault, error code 0x2"),
    (ExitInfo(ExitReason.EXCEPTION_NMI, interruption_info=0x8000_0603), "#BP breakpoint (software exception)"),
    (ExitInfo(ExitReason.EXCEPTION_NMI, interruption_info=0x8000_0202), "NMI"),
    (ExitInfo(ExitReason.EXTERNAL_INTERRUPT, interruption_info=0x8000_0020), "external interrupt, vector 0x20"),
    (ExitInfo(ExitReason.INVLPG, 0xC000_1000), "invlpg 0xc0001000"),
    (ExitInfo(ExitReason.HLT), ""),
])
def test_describe_puts_the_qualification_in_words(info, text):
    assert describe(info) == text


# --- the VMCS: event injection --------------------------------------------------------

def protected_vmcs() -> Vmcs:
    vmcs = Vmcs()
    vmcs.guest.cr0 = CR0_PE
    return vmcs


def test_an_injected_event_is_taken_once_by_the_next_vm_entry():
    vmcs = protected_vmcs()
    vmcs.inject(14, HW, error_code=0x2)
    assert vmcs.entry_interruption_info == 0x8000_0B0E and vmcs.entry_exception_error_code == 2
    assert vmcs.take_injection() == Injection(14, HW, 2, 0)
    assert vmcs.take_injection() is None


def test_a_software_interrupt_carries_its_instruction_length_to_entry():
    vmcs = protected_vmcs()
    vmcs.inject(0x80, InterruptionType.SOFTWARE_INTERRUPT, length=2)
    assert vmcs.take_injection() == Injection(0x80, InterruptionType.SOFTWARE_INTERRUPT, None, 2)


def test_a_vectoring_entry_leaves_no_sti_or_mov_ss_blocking_behind():
    vmcs = protected_vmcs()
    vmcs.guest.interruptibility = Blocking.STI | Blocking.NMI
    vmcs.inject(13, HW, error_code=0)
    vmcs.take_injection()
    assert vmcs.guest.interruptibility == Blocking.NMI


def test_a_vm_exit_records_its_information_and_cancels_an_untaken_injection():
    vmcs = protected_vmcs()
    vmcs.inject(0x20, InterruptionType.EXTERNAL_INTERRUPT)
    info = ExitInfo(ExitReason.HLT, instruction_length=1)
    vmcs.record_exit(info)
    assert vmcs.exit_info is info
    assert vmcs.take_injection() is None


@pytest.mark.parametrize("vector, kind, error_code, length, why", [
    (32, HW, None, 0, "at most 31"),
    (3, InterruptionType.NMI, None, 0, "vector 2"),
    (13, HW, None, 0, "delivers an error code"),
    (21, HW, None, 0, "delivers an error code"),              # #CP, in current SDMs
    (6, HW, 0, 0, "only a hardware exception"),
    (0x20, InterruptionType.EXTERNAL_INTERRUPT, 0, 0, "only a hardware exception"),
    (13, HW, 0x1_0000, 0, "bits 31:16"),
    (0x80, InterruptionType.SOFTWARE_INTERRUPT, None, 0, "length"),
    (3, InterruptionType.SOFTWARE_EXCEPTION, None, 16, "length"),
    (256, InterruptionType.EXTERNAL_INTERRUPT, None, 0, "0-255"),
])
def test_inject_refuses_what_the_vm_entry_checks_refuse(vector, kind, error_code, length, why):
    with pytest.raises(ValueError, match=why):
        protected_vmcs().inject(vector, kind, error_code, length)


def test_an_unrestricted_guest_in_real_mode_gets_no_error_code():
    vmcs = Vmcs(controls=VmcsControls(unrestricted_guest=True, activate_secondary_controls=True))
    with pytest.raises(ValueError, match="only a hardware exception"):
        vmcs.inject(13, HW, error_code=0)
    vmcs.inject(13, HW)
    assert vmcs.take_injection() == Injection(13, HW, None, 0)


def test_only_one_event_waits_for_the_next_entry():
    vmcs = protected_vmcs()
    vmcs.inject(0x20, InterruptionType.EXTERNAL_INTERRUPT)
    with pytest.raises(ValueError, match="already waiting"):
        vmcs.inject(0x21, InterruptionType.EXTERNAL_INTERRUPT)


@pytest.mark.parametrize("blocking, kind, vector, why", [
    (Blocking.STI, InterruptionType.EXTERNAL_INTERRUPT, 0x20, "shadow"),
    (Blocking.MOV_SS, InterruptionType.EXTERNAL_INTERRUPT, 0x20, "shadow"),
    (Blocking.MOV_SS, InterruptionType.NMI, 2, "shadow"),
])
def test_an_interrupt_shadow_refuses_interrupts_and_a_mov_ss_shadow_nmis(blocking, kind, vector, why):
    vmcs = protected_vmcs()
    vmcs.guest.interruptibility = blocking
    with pytest.raises(ValueError, match=why):
        vmcs.inject(vector, kind)


def test_an_interrupt_shadow_does_not_hold_off_an_exception():
    vmcs = protected_vmcs()
    vmcs.guest.interruptibility = Blocking.STI
    vmcs.inject(13, HW, error_code=0)


def test_virtual_nmi_blocking_refuses_an_nmi():
    vmcs = protected_vmcs()
    vmcs.guest.interruptibility = Blocking.NMI
    vmcs.inject(2, InterruptionType.NMI)                   # without virtual NMIs, no such check
    vmcs.take_injection()
    vmcs.controls.virtual_nmis = vmcs.controls.nmi_exiting = True
    with pytest.raises(ValueError, match="virtual-NMI"):
        vmcs.inject(2, InterruptionType.NMI)


@pytest.mark.parametrize("state, kind, vector, error_code, allowed", [
    (ActivityState.HLT, InterruptionType.EXTERNAL_INTERRUPT, 0x20, None, True),
    (ActivityState.HLT, InterruptionType.NMI, 2, None, True),
    (ActivityState.HLT, HW, 1, None, True),                          # #DB
    (ActivityState.HLT, HW, 18, None, True),                         # #MC
    (ActivityState.HLT, HW, 13, 0, False),
    (ActivityState.HLT, InterruptionType.SOFTWARE_INTERRUPT, 0x80, None, False),
    (ActivityState.SHUTDOWN, InterruptionType.NMI, 2, None, True),
    (ActivityState.SHUTDOWN, InterruptionType.EXTERNAL_INTERRUPT, 0x20, None, False),
    (ActivityState.WAIT_FOR_SIPI, InterruptionType.NMI, 2, None, False),
])
def test_the_activity_state_limits_what_can_be_injected(state, kind, vector, error_code, allowed):
    vmcs = protected_vmcs()
    vmcs.guest.activity_state = state
    length = 2 if kind.is_software else 0
    if allowed:
        vmcs.inject(vector, kind, error_code, length)
    else:
        with pytest.raises(ValueError, match="takes"):
            vmcs.inject(vector, kind, error_code, length)
