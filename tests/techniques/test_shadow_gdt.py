"""The shadow GDT admits no descriptor that reaches real ring 0 (trap's ``shadow_descriptor``, pure).

Ring compression: a guest descriptor of DPL 0 becomes DPL 1; 1, 2 and 3 stay. The accessed bit
is set ahead, system descriptors (TSS, LDT, call and task gates) are never present, and each of
the two views hides the non-conforming code of the rings a transfer from its own ring must not
reach without the monitor.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.machine.descriptors import decode_descriptor, encode_segment
from hypervisor.techniques.trap import ACCESSED, REAL_RING, shadow_descriptor

CODE, CONFORMING_CODE, DATA, STACK_DOWN = 0x9A, 0x9E, 0x92, 0x96     # present, S=1, DPL 0
TSS_AVAILABLE, TSS_BUSY, LDT, CALL_GATE, TASK_GATE, INT_GATE, TRAP_GATE = 0x89, 0x8B, 0x82, 0x8C, 0x85, 0x8E, 0x8F
VIEWS = pytest.mark.parametrize("kernel_view", [True, False], ids=["kernel-view", "user-view"])
# The only bits the shadow may change: accessed (40), DPL (45-46), present (47).
MAY_CHANGE = (1 << 40) | (3 << 45) | (1 << 47)


def descriptor(access: int, dpl: int = 0, base: int = 0x00123000, limit: int = 0xFFFFF) -> int:
    return encode_segment(base, limit, access | (dpl << 5))


def system(access: int, dpl: int = 0) -> int:
    return descriptor(access, dpl, base=0x00104000, limit=0x67) & ~(0xF << 52)    # byte granularity


def test_real_ring_compresses_only_ring_0():
    assert REAL_RING == (1, 1, 2, 3)


@VIEWS
@pytest.mark.parametrize("dpl, real", [(0, 1), (1, 1), (2, 2), (3, 3)])
@pytest.mark.parametrize("kind", [DATA, STACK_DOWN, CONFORMING_CODE, CODE], ids=["data", "stack", "conforming", "code"])
def test_dpl_0_becomes_1_and_dpls_1_to_3_stay(kind, dpl, real, kernel_view):
    d = decode_descriptor(shadow_descriptor(descriptor(kind, dpl), kernel_view))
    assert d.dpl == real


@VIEWS
@pytest.mark.parametrize("dpl", range(4))
@pytest.mark.parametrize("kind", [DATA, CONFORMING_CODE, CODE, CODE & ~0x80], ids=["data", "conforming", "code", "absent"])
def test_the_accessed_bit_is_set_so_the_cpu_never_writes_the_shadow(kind, dpl, kernel_view):
    raw = descriptor(kind, dpl)
    assert not raw & ACCESSED
    assert shadow_descriptor(raw, kernel_view) & ACCESSED


@VIEWS
@pytest.mark.parametrize("dpl", range(4))
@pytest.mark.parametrize("kind", [TSS_AVAILABLE, TSS_BUSY, LDT, CALL_GATE, TASK_GATE, INT_GATE, TRAP_GATE],
                         ids=["tss", "busy-tss", "ldt", "call-gate", "task-gate", "int-gate", "trap-gate"])
def test_system_descriptors_are_never_present(kind, dpl, kernel_view):
    raw = system(kind, dpl)
    assert decode_descriptor(raw).present and decode_descriptor(raw).system
    shadow = decode_descriptor(shadow_descriptor(raw, kernel_view))
    assert not shadow.present
    assert shadow.system and shadow.type == kind & 0xF          # still recognisably what it was


@pytest.mark.parametrize("dpl, present", [(0, True), (1, False), (2, False), (3, False)])
def test_kernel_view_hides_non_conforming_code_of_dpl_1_and_above(dpl, present):
    assert decode_descriptor(shadow_descriptor(descriptor(CODE, dpl), True)).present is present


@pytest.mark.parametrize("dpl, present", [(0, False), (1, True), (2, True), (3, True)])
def test_user_view_hides_only_dpl_0_code(dpl, present):
    assert decode_descriptor(shadow_descriptor(descriptor(CODE, dpl), False)).present is present


@VIEWS
@pytest.mark.parametrize("dpl", range(4))
@pytest.mark.parametrize("kind", [CONFORMING_CODE, CONFORMING_CODE & ~0x2, DATA, STACK_DOWN, DATA & ~0x2],
                         ids=["conforming", "conforming-execute-only", "data", "stack-down", "read-only"])
def test_conforming_code_and_data_are_never_hidden(kind, dpl, kernel_view):
    assert decode_descriptor(shadow_descriptor(descriptor(kind, dpl), kernel_view)).present


@VIEWS
@pytest.mark.parametrize("dpl", range(4))
@pytest.mark.parametrize("kind", [CODE, CONFORMING_CODE, DATA], ids=["code", "conforming", "data"])
def test_a_segment_not_present_stays_not_present(kind, dpl, kernel_view):
    raw = descriptor(kind & ~0x80, dpl)
    assert not decode_descriptor(shadow_descriptor(raw, kernel_view)).present


@VIEWS
@pytest.mark.parametrize("kind", [CODE, CONFORMING_CODE, DATA, TSS_AVAILABLE, CALL_GATE])
def test_base_limit_type_and_flags_are_kept(kind, kernel_view):
    raw = descriptor(kind, 3, base=0xDEADB000, limit=0xABCDE)
    assert (shadow_descriptor(raw, kernel_view) ^ raw) & ~MAY_CHANGE == 0


def test_the_null_descriptor_stays_unusable():
    for kernel_view in (True, False):
        assert not decode_descriptor(shadow_descriptor(0, kernel_view)).present


descriptors = st.integers(0, (1 << 64) - 1)


@settings(max_examples=300, deadline=None)
@given(descriptors, st.booleans())
def test_no_shadow_descriptor_is_present_with_dpl_0_or_as_a_system_descriptor(raw, kernel_view):
    shadow = decode_descriptor(shadow_descriptor(raw, kernel_view))
    if shadow.present:
        assert shadow.dpl != 0
        assert not shadow.system


@settings(max_examples=300, deadline=None)
@given(descriptors, st.booleans())
def test_every_code_or_data_shadow_descriptor_has_dpl_1_or_more_and_is_accessed(raw, kernel_view):
    if decode_descriptor(raw).system:
        return
    shadow = shadow_descriptor(raw, kernel_view)
    assert decode_descriptor(shadow).dpl == REAL_RING[decode_descriptor(raw).dpl]
    assert shadow & ACCESSED


@settings(max_examples=300, deadline=None)
@given(descriptors, st.booleans())
def test_the_shadow_changes_nothing_but_accessed_dpl_and_present(raw, kernel_view):
    assert (shadow_descriptor(raw, kernel_view) ^ raw) & ~MAY_CHANGE == 0


@settings(max_examples=300, deadline=None)
@given(descriptors)
def test_present_non_conforming_code_is_shown_in_exactly_one_view(raw):
    raw = (raw | (1 << 47) | (1 << 44) | (1 << 43)) & ~(1 << 42)     # present, S, code, not conforming
    shown = [decode_descriptor(shadow_descriptor(raw, view)).present for view in (True, False)]
    assert shown.count(True) == 1
    assert shown[0] == (decode_descriptor(raw).dpl == 0)      # the kernel view shows the kernel's own code
