"""The virtual CPU: the privileged state a deprivileged guest believes in, and what it can observe."""
from __future__ import annotations

import dataclasses

import pytest

from hypervisor.vmm.vcpu import VirtualCpu


def test_a_new_vcpu_is_in_protected_mode_without_paging_with_interrupts_off_at_cpl0():
    v = VirtualCpu()
    assert (v.cpl, v.iflag, v.iopl) == (0, False, 0)
    assert v.cr0 == 0x11                                # PE | ET, as Multiboot leaves it
    assert v.dr[6:] == [0xFFFF0FF0, 0x400]              # DR6 and DR7 power-on values


def test_each_vcpu_has_its_own_debug_registers_and_msrs():
    a, b = VirtualCpu(), VirtualCpu()
    a.dr[0] = 0x1234
    a.msrs[0x174] = 8
    assert b.dr[0] == 0 and b.msrs == {}


@pytest.mark.parametrize("n, field", [(0, "cr0"), (2, "cr2"), (3, "cr3"), (4, "cr4")])   # (ET set: CR0 forces it)
def test_set_control_register_writes_the_named_field_and_control_register_reads_it(n, field):
    v = VirtualCpu()
    others = {f: getattr(v, f) for f in ("cr0", "cr2", "cr3", "cr4") if f != field}
    v.set_control_register(n, 0xCAFE0010 + n)
    assert getattr(v, field) == 0xCAFE0010 + n
    assert v.control_register(n) == 0xCAFE0010 + n
    assert {f: getattr(v, f) for f in others} == others


def test_cr0_et_reads_1_whatever_is_written():
    """ET is hardwired on every CPU since the 486 DX; QEMU's cpu_x86_update_cr0 forces it."""
    v = VirtualCpu()
    v.set_control_register(0, 0x80010001)
    assert v.control_register(0) == 0x80010011


def test_control_register_reads_each_field_not_a_copy_taken_earlier():
    v = VirtualCpu()
    v.cr3 = 0x5000
    assert v.control_register(3) == 0x5000
    v.cr4 = 0x10
    assert v.control_register(4) == 0x10


@pytest.mark.parametrize("n", [1, 5, 6, 7, 8])
def test_set_control_register_refuses_a_register_the_cpu_lacks(n):
    v = VirtualCpu()
    before = dataclasses.replace(v)
    with pytest.raises(ValueError):
        v.set_control_register(n, 1)
    assert v == before


def test_architectural_state_is_what_a_ring0_guest_could_observe():
    v = VirtualCpu(iflag=True, cr0=0x80000011, cr2=0x1234, cr3=0x9000, cr4=0x10,
                   gdt_base=0x1000, gdt_limit=0x2F, idt_base=0x2000, idt_limit=0x7FF,
                   msrs={0x176: 0xC0100000, 0x174: 0x08})
    assert v.architectural() == {
        "if": True, "cr0": 0x80000011, "cr2": 0x1234, "cr3": 0x9000, "cr4": 0x10,
        "gdtr": (0x1000, 0x2F), "idtr": (0x2000, 0x7FF), "msrs": {0x174: 0x08, 0x176: 0xC0100000},
    }
    assert list(v.architectural()["msrs"]) == [0x174, 0x176]     # sorted, so traces compare equal


def test_architectural_state_ignores_the_monitors_bookkeeping():
    a = VirtualCpu()
    b = VirtualCpu(cpl=3, shadow_from=17, tr=0x28, tr_base=0x4000, tr_limit=0x67)
    assert a.architectural() == b.architectural()


@pytest.mark.parametrize("change", [
    {"iflag": True}, {"cr0": 0x13}, {"cr2": 1}, {"cr3": 0x1000}, {"cr4": 0x80},
    {"gdt_base": 8}, {"gdt_limit": 7}, {"idt_base": 8}, {"idt_limit": 7}, {"msrs": {0x174: 8}},
])
def test_architectural_state_differs_when_any_observable_field_does(change):
    assert VirtualCpu().architectural() != VirtualCpu(**change).architectural()


def test_architectural_state_is_a_snapshot_not_a_view():
    v = VirtualCpu(msrs={0x174: 8})
    snapshot = v.architectural()
    snapshot["msrs"][0x174] = 0x10
    v.msrs[0x175] = 1
    assert v.msrs == {0x174: 8, 0x175: 1}
    assert snapshot["msrs"] == {0x174: 0x10}
