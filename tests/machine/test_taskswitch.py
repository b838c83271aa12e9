"""Hardware task switching through an IDT task gate (machine/taskswitch.py, machine/interrupts.py).

The referee for the switch itself is the CPU: Unicorn makes the same switch for a far call
through a task gate (QEMU's ``switch_tss``, as ``SWITCH_TSS_CALL``, the path an event through a
task gate takes in QEMU). So each case is set up twice on a small protected-mode PC: once the
CPU runs ``call 0x38:0`` (a GDT task gate to TSS 0x30), once ``enter_task`` switches to 0x30 as
if an event had arrived at that instruction; every register, segment cache, TR, LDTR, CR0, CR3
and the bytes of the GDT, the TSSs and the page tables must come out the same. Then delivery:
the gate's own checks, the error code on the new task's stack, and faults after the switch,
which belong to the new task. The guests/taskgate_*.S guests take the same paths against QEMU
itself (tests/techniques/test_conformance.py); here they run against their recorded output.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hypervisor.errors import UnsupportedGuest
from hypervisor.machine.cpu import (CR0, CR3, CR4, CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, EFLAGS, EIP, ES, ESI,
                                    ESP, FS, GDTR, GS, IDTR, LDTR, SS, TR, Cpu)
from hypervisor.machine.descriptors import encode_segment
from hypervisor.machine.interrupts import (DF, GP, NP, TS, CpuFrame, DeliveryFault, EventKind, deliver,
                                           deliver_with_escalation, table_descriptor)
from hypervisor.machine.taskswitch import TaskSwitchView, UnmodelledTaskSwitch, enter_task
from hypervisor.memory.walker import GuestAddressSpace, Paging
from hypervisor.session import run_image

GUESTS = Path(__file__).resolve().parents[2] / "guests"

GDT_BASE, LDT_BASE, IDT_BASE, CODE, HANDLERS = 0x500, 0x5000, 0x7000, 0x3000, 0x2000
OLD_TSS, NEW_TSS, SHORT_TSS, TSS16 = 0x6000, 0x6100, 0x6200, 0x6300
OLD_SEL, NEW_SEL, GATE_SEL, LDT_SEL, SHORT_SEL, NP_SEL, TSS16_SEL = 0x28, 0x30, 0x38, 0x40, 0x48, 0x50, 0x58
REMAPPED_DS = 0x60      # null in the GDT; data in the copy the new task's page tables show there
NEW_EIP, NEW_ESP, OLD_ESP = 0x4000, 0x9000, 0x8800
PD_OLD, PD_NEW, PT_OLD, PT_NEW, GDT_COPY = 0x10000, 0x11000, 0x12000, 0x13000, 0x20000
CALL_GATE = bytes.fromhex("9a00000000") + struct.pack("<H", GATE_SEL)     # call far 0x38:0
TASK_VECTOR, NP_GATE_VECTOR, USER_VECTOR = 0x40, 0x41, 0x42


def gate(selector: int, offset: int, access: int) -> int:
    return (offset & 0xFFFF) | selector << 16 | access << 40 | (offset >> 16) << 48


# Every code and data descriptor has its accessed bit set already: the CPU's own switch does not
# set it and a segment load by the monitor does (taskswitch.py's header), which is not what is
# compared here.
GDT = [0,
       encode_segment(0, 0xFFFFF, 0x9B), encode_segment(0, 0xFFFFF, 0x93),      # 0x08, 0x10
       encode_segment(0, 0xFFFFF, 0xFB), encode_segment(0, 0xFFFFF, 0xF3),      # 0x1b, 0x23
       encode_segment(OLD_TSS, 0x67, 0x8B, 0),                                    # 0x28 busy: TR
       encode_segment(NEW_TSS, 0x67, 0x89, 0),                                    # 0x30
       gate(NEW_SEL, 0, 0x85),                                                    # 0x38 task gate
       encode_segment(LDT_BASE, 0x17, 0x82, 0),                                   # 0x40 LDT
       encode_segment(SHORT_TSS, 0x66, 0x89, 0),                                  # 0x48 one byte short
       encode_segment(NEW_TSS, 0x67, 0x09, 0),                                    # 0x50 not present
       encode_segment(TSS16, 0x2B, 0x81, 0),                                      # 0x58 a 16-bit TSS
       0]                                                                         # 0x60 see REMAPPED_DS
LDT = [0, encode_segment(0x1000, 0xFFFFF, 0x93), encode_segment(0, 0xFFFFF, 0xF3)]   # 0x0c, 0x17


class Physical:
    """The CPU's memory as the page walker reads it."""

    def __init__(self, uc):
        self.uc = uc

    def read(self, paddr: int, length: int) -> bytes:
        return bytes(self.uc.mem_read(paddr, length))

    def write(self, paddr: int, data: bytes) -> None:
        self.uc.mem_write(paddr, bytes(data))

    def read_u32(self, paddr: int) -> int:
        return struct.unpack("<I", self.read(paddr, 4))[0]

    def write_u32(self, paddr: int, value: int) -> None:
        self.write(paddr, struct.pack("<I", value))


class CpuView:
    """The real CPU's tables, as native's RealView gives them: the paging registers are read
    once, and again only when a task switch says CR3 changed."""

    def __init__(self, cpu: Cpu):
        self.cpu, self.cpl = cpu, cpu.cpl
        self.idt_base, self.idt_limit = cpu.table_register(IDTR)
        self.address_space_changes = 0
        self._paging = self._read_paging()
        self.space = GuestAddressSpace(Physical(cpu.uc), lambda: self._paging)

    def _read_paging(self) -> Paging:
        return Paging(*self.cpu.read_batch((CR0, CR3, CR4)))

    def address_space_changed(self) -> None:
        self.address_space_changes += 1
        self._paging = self._read_paging()

    def read_linear(self, address: int, length: int) -> bytes:
        return self.space.read(address & 0xFFFFFFFF, length)

    def write_linear(self, address: int, data: bytes) -> None:
        self.space.write(address & 0xFFFFFFFF, data)

    def descriptor(self, selector: int):
        if selector & 4:
            _, base, limit, _ = self.cpu.segment_register(LDTR)
        else:
            base, limit = self.cpu.table_register(GDTR)
        return table_descriptor(self.read_linear, base, limit, selector)

    def tss_base(self) -> int:
        return self.cpu.segment_register(TR)[1]


class TablesOnly(CpuView):
    """A view without the CPU, as a technique that keeps TR virtual (trap) gives."""

    def __init__(self, cpu: Cpu):
        super().__init__(cpu)
        del self.cpu

    def descriptor(self, selector: int):
        raise AssertionError("not reached")

    def tss_base(self) -> int:
        raise AssertionError("not reached")


def new_tss(eip: int = NEW_EIP, eflags: int = 0x2, cs: int = 0x08, ss: int = 0x10, ds: int = 0x10,
            ldt: int = 0, cr3: int = 0, esp: int = NEW_ESP) -> bytes:
    """A 32-bit TSS image with distinct registers (EAX 0xa0a0a0a0, ECX 0xc1c1c1c1, ...)."""
    gprs = (0xA0A0A0A0, 0xC1C1C1C1, 0xD2D2D2D2, 0xB3B3B3B3, esp, 0xE5E5E5E5, 0x56565656, 0xD7D7D7D7)
    segments = (ss, cs, ss, ds, ss, 0)
    return (struct.pack("<7I", 0, 0x7000, 0x10, 0, 0, 0, 0) + struct.pack("<3I", cr3, eip, eflags)
            + struct.pack("<8I", *gprs) + struct.pack("<6I", *segments) + struct.pack("<HHHH", ldt, 0, 0, 0x68))


def machine(tss: bytes | None = None, paging: bool = False, remap_gdt: bool = False) -> Cpu:
    """A PC in protected mode, running the old task (TR 0x28, loaded as ltr loads it) at CODE.

    With ``paging``, the old task runs on PD_OLD (identity for 4 MiB) and the new TSS names
    PD_NEW; with ``remap_gdt`` too, PD_NEW maps the GDT's page to a copy in which REMAPPED_DS
    is a data segment (in the GDT itself it is null): a switch that checked the new task's DS
    through the old page tables would refuse it.
    """
    cpu = Cpu(tcg_buffer_mib=4, counting="count")
    uc = cpu.uc
    uc.mem_map(0, 0x400000)
    uc.mem_write(GDT_BASE, b"".join(struct.pack("<Q", e) for e in GDT))
    uc.mem_write(LDT_BASE, b"".join(struct.pack("<Q", e) for e in LDT))
    cpu.set_table_register(GDTR, GDT_BASE, len(GDT) * 8 - 1)
    idt = {TASK_VECTOR: gate(NEW_SEL, 0, 0x85), NP_GATE_VECTOR: gate(NEW_SEL, 0, 0x05),
           USER_VECTOR: gate(NEW_SEL, 0, 0x85), 0x43: gate(0x08, 0x2430, 0x0E)}
    for vector in (DF, TS, NP, GP):
        idt[vector] = gate(0x08, HANDLERS + vector * 0x10, 0x8E)
    for vector, raw in idt.items():
        uc.mem_write(IDT_BASE + vector * 8, struct.pack("<Q", raw))
    cpu.set_table_register(IDTR, IDT_BASE, 0x7FF)
    uc.mem_write(OLD_TSS, struct.pack("<III", 0, 0x7800, 0x10) + bytes(0x58) + struct.pack("<I", 0x680000))
    uc.mem_write(NEW_TSS, tss if tss is not None else new_tss(cr3=PD_NEW if paging else 0))
    cpu.write(CR0, 0x11)
    for reg, sel in ((CS, 0x08), (SS, 0x10), (DS, 0x10), (ES, 0x10), (FS, 0x10), (GS, 0x10)):
        cpu.write(reg, sel)
    cpu.set_segment_register(TR, OLD_SEL, OLD_TSS, 0x67, 0x8900)
    for reg, value in ((EAX, 0x11111111), (ECX, 0x22222222), (EDX, 0x33333333), (EBX, 0x44444444),
                       (ESP, OLD_ESP), (EBP, 0x66666666), (ESI, 0x77777777), (EDI, 0x88888888),
                       (EFLAGS, 0x2D7), (EIP, CODE)):
        cpu.write(reg, value)
    uc.mem_write(CODE, CALL_GATE)
    if paging:
        # Accessed and dirty already: the CPU's own switch fetches the call instruction, which
        # sets the code page's accessed bit, and enter_task fetches nothing.
        identity = [(i << 12) | 0x63 for i in range(0x400)]
        uc.mem_write(PT_OLD, struct.pack("<1024I", *identity))
        if remap_gdt:
            identity[0] = GDT_COPY | 0x63
            copy = list(GDT)
            copy[REMAPPED_DS >> 3] = encode_segment(0x1000, 0xFFFFF, 0x93)
            uc.mem_write(GDT_COPY + GDT_BASE, b"".join(struct.pack("<Q", e) for e in copy))
        uc.mem_write(PT_NEW, struct.pack("<1024I", *identity))
        uc.mem_write(PD_OLD, struct.pack("<I", PT_OLD | 0x23) + bytes(0xFFC))
        uc.mem_write(PD_NEW, struct.pack("<I", PT_NEW | 0x23) + bytes(0xFFC))
        cpu.write(CR3, PD_OLD)
        cpu.write(CR0, 0x80000011)
    return cpu


REGISTERS = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, EFLAGS, EIP, CR0, CR3)
MEMORY = ((GDT_BASE, len(GDT) * 8), (OLD_TSS, 0x68), (NEW_TSS, 0x68), (PD_OLD, 0x4000),
          (GDT_COPY + GDT_BASE, len(GDT) * 8))


def state(cpu: Cpu) -> dict:
    """Everything a task switch may change."""
    return {"registers": cpu.read_batch(REGISTERS), "cpl": cpu.cpl,
            "segments": [cpu.segment_register(r) for r in (ES, CS, SS, DS, FS, GS, LDTR, TR)],
            "memory": [bytes(cpu.uc.mem_read(a, n)) for a, n in MEMORY]}


def by_the_cpu(cpu: Cpu) -> dict:
    cpu.uc.emu_start(CODE, 0, count=1)
    assert cpu.read(EIP) != CODE + len(CALL_GATE), "the call through the task gate did not switch"
    return state(cpu)


def by_hvsim(cpu: Cpu) -> dict:
    enter_task(CpuView(cpu), NEW_SEL, CODE + len(CALL_GATE), None)
    return state(cpu)


# == the switch: the same as the CPU's own ===========================================================
SWITCHES = {
    "ring 0, flat": dict(tss=new_tss(eflags=0x2C3)),
    "an LDT, DS from it": dict(tss=new_tss(ldt=LDT_SEL, ds=0x0C)),
    "to ring 3": dict(tss=new_tss(cs=0x1B, ss=0x23, ds=0x17, ldt=LDT_SEL, eflags=0x3202)),
    "paging, a new CR3": dict(paging=True),
    "paging, the GDT read through the new CR3": dict(tss=new_tss(ds=REMAPPED_DS, cr3=PD_NEW), paging=True,
                                                    remap_gdt=True),
}


@pytest.mark.parametrize("case", SWITCHES.values(), ids=SWITCHES.keys())
def test_the_switch_leaves_what_the_cpus_own_switch_leaves(case):
    assert by_hvsim(machine(**case)) == by_the_cpu(machine(**case))


def test_the_switch_saves_the_old_task_links_and_nests_the_new_one():
    cpu = machine()
    entered = enter_task(CpuView(cpu), NEW_SEL, 0x3007, None)
    old = struct.unpack("<10I", cpu.uc.mem_read(OLD_TSS + 0x20, 40))
    assert old == (0x3007, 0x2D7, 0x11111111, 0x22222222, 0x33333333, 0x44444444, OLD_ESP, 0x66666666,
                   0x77777777, 0x88888888)
    assert struct.unpack("<H", cpu.uc.mem_read(NEW_TSS, 2))[0] == OLD_SEL          # the back link
    access = cpu.uc.mem_read(GDT_BASE + OLD_SEL + 5, 1)[0], cpu.uc.mem_read(GDT_BASE + NEW_SEL + 5, 1)[0]
    assert access == (0x8B, 0x8B)                                                     # both busy
    assert cpu.segment_register(TR) == (NEW_SEL, NEW_TSS, 0x67, 0x8900)              # cached available
    assert cpu.read(EFLAGS) & (1 << 14) and cpu.read(CR0) & 8                        # NT, CR0.TS
    assert (entered.eip, entered.cs, entered.esp, entered.ss, entered.cpl) == (NEW_EIP, 0x08, NEW_ESP, 0x10, 0)


def test_a_cr3_load_is_announced_to_the_view_only_with_paging_on():
    for paging, changes in ((False, 0), (True, 1)):
        cpu = machine(paging=paging)
        view = CpuView(cpu)
        enter_task(view, NEW_SEL, CODE, None)
        assert view.address_space_changes == changes
        assert cpu.read(CR3) == (PD_NEW if paging else 0)


def test_the_old_tss_is_probed_before_anything_is_saved_in_it():
    """QEMU touches the old TSS's first and last byte, writing each back, before it saves: a
    read-only TSS page faults there (CR2 the TSS's first byte), with nothing saved."""
    cpu = machine(paging=True)
    cpu.uc.mem_write(PT_OLD + 4 * (OLD_TSS >> 12), struct.pack("<I", OLD_TSS | 0x61))   # read-only
    cpu.write(CR0, cpu.read(CR0) | 0x10000)                                             # WP
    before = state(cpu)
    with pytest.raises(DeliveryFault) as caught:
        deliver(CpuView(cpu), TASK_VECTOR, EventKind.SOFTWARE, None, AT)
    assert (caught.value.vector, caught.value.error_code, caught.value.cr2) == (14, 3, OLD_TSS)
    assert state(cpu) == before


def test_the_error_code_goes_on_the_new_tasks_stack():
    cpu = machine()
    entered = enter_task(CpuView(cpu), NEW_SEL, CODE, 0x1234)
    assert entered.esp == cpu.read(ESP) == NEW_ESP - 4
    assert struct.unpack("<I", cpu.uc.mem_read(NEW_ESP - 4, 4))[0] == 0x1234


# == delivery through a task gate =====================================================================
AT = CpuFrame(eip=CODE, cs=0x08, eflags=0x2D7, esp=OLD_ESP, ss=0x10)


def test_an_int_through_a_task_gate_enters_the_task_with_no_error_code():
    cpu = machine()
    view = CpuView(cpu)
    done = deliver(view, TASK_VECTOR, EventKind.SOFTWARE, None, CpuFrame(CODE + 2, 0x08, 0x2D7, OLD_ESP, 0x10))
    assert (done.frame.eip, done.frame.cs, done.frame.esp, done.handler_cpl, done.error_code) == (
        NEW_EIP, 0x08, NEW_ESP, 0, None)
    assert struct.unpack("<I", cpu.uc.mem_read(OLD_TSS + 0x20, 4))[0] == CODE + 2


def test_an_exception_through_a_task_gate_pushes_its_error_code_on_the_new_stack():
    cpu = machine()
    uc = cpu.uc
    uc.mem_write(IDT_BASE + GP * 8, struct.pack("<Q", gate(NEW_SEL, 0, 0x85)))
    done = deliver(CpuView(cpu), GP, EventKind.EXCEPTION, 0x1234, AT)
    assert (done.frame.esp, done.error_code) == (NEW_ESP - 4, 0x1234)
    assert struct.unpack("<I", uc.mem_read(NEW_ESP - 4, 4))[0] == 0x1234


@pytest.mark.parametrize("vector, kind, cpl, fault", [
    (NP_GATE_VECTOR, EventKind.SOFTWARE, 0, (NP, NP_GATE_VECTOR * 8 + 2)),   # gate not present
    (USER_VECTOR, EventKind.SOFTWARE, 3, (GP, USER_VECTOR * 8 + 2)),         # int n at CPL 3, DPL-0 gate
    (0x43, EventKind.SOFTWARE, 3, (GP, 0x43 * 8 + 2)),                       # DPL before P, any gate
], ids=["not present", "DPL below CPL", "not-present interrupt gate from ring 3"])
def test_the_gate_is_checked_as_qemu_checks_it(vector, kind, cpl, fault):
    cpu = machine()
    view = CpuView(cpu)
    view.cpl = cpl
    before = state(cpu)
    with pytest.raises(DeliveryFault) as caught:
        deliver(view, vector, kind, None, AT)
    assert (caught.value.vector, caught.value.error_code) == fault
    assert state(cpu) == before


@pytest.mark.parametrize("selector, fault", [
    (SHORT_SEL, (TS, SHORT_SEL)), (NP_SEL, (NP, NP_SEL)), (OLD_SEL, (GP, OLD_SEL)),
    (0x10, (GP, 0x10)), (0x44, (TS, 0x44)), (0x100, (GP, 0x100)),
], ids=["limit 0x66", "not present", "busy", "a data segment", "an LDT selector", "past the GDT limit"])
def test_a_bad_tss_faults_in_the_old_task_before_anything_is_saved(selector, fault):
    cpu = machine()
    cpu.uc.mem_write(IDT_BASE + TASK_VECTOR * 8, struct.pack("<Q", gate(selector, 0, 0x85)))
    before = state(cpu)
    with pytest.raises(DeliveryFault) as caught:
        deliver(CpuView(cpu), TASK_VECTOR, EventKind.SOFTWARE, None, AT)
    assert (caught.value.vector, caught.value.error_code, caught.value.resume) == (*fault, None)
    assert state(cpu) == before


def test_a_bad_data_segment_faults_in_the_new_task_and_is_delivered_from_there():
    cpu = machine(tss=new_tss(ds=0x1234))
    delivered, _ = deliver_with_escalation(CpuView(cpu), TASK_VECTOR, EventKind.SOFTWARE, None,
                                           CpuFrame(CODE + 2, 0x08, 0x2D7, OLD_ESP, 0x10), fault_eip=CODE)
    assert delivered.frame.eip == HANDLERS + TS * 0x10
    assert cpu.segment_register(TR)[0] == NEW_SEL
    error, eip, cs = struct.unpack("<3I", cpu.uc.mem_read(delivered.frame.esp, 12))
    assert (error, eip, cs) == (0x1234, NEW_EIP, 0x08)        # the new task's frame, its stack
    assert delivered.frame.esp == NEW_ESP - 16


def test_a_fault_after_the_switch_while_delivering_gp_is_a_double_fault_in_the_new_task():
    cpu = machine(tss=new_tss(ds=0x1234))
    cpu.uc.mem_write(IDT_BASE + GP * 8, struct.pack("<Q", gate(NEW_SEL, 0, 0x85)))
    delivered, notes = deliver_with_escalation(CpuView(cpu), GP, EventKind.EXCEPTION, 0x4321, AT)
    assert delivered.frame.eip == HANDLERS + DF * 0x10 and notes
    error, eip = struct.unpack("<2I", cpu.uc.mem_read(delivered.frame.esp, 8))
    assert (error, eip) == (0, NEW_EIP)


def test_an_eip_past_the_new_code_segments_limit_is_gp_0_in_the_new_task():
    cpu = machine(tss=new_tss(eip=0x200000))
    cpu.uc.mem_write(GDT_BASE + 8, struct.pack("<Q", encode_segment(0, 0xFFFF, 0x9B, 0x4)))  # CS: 64 KiB
    with pytest.raises(DeliveryFault) as caught:
        deliver(CpuView(cpu), TASK_VECTOR, EventKind.SOFTWARE, None, AT)
    assert (caught.value.vector, caught.value.error_code) == (GP, 0)
    assert caught.value.resume.eip == 0x200000


@pytest.mark.parametrize("setup, why", [
    (lambda cpu: cpu.uc.mem_write(IDT_BASE + TASK_VECTOR * 8, struct.pack("<Q", gate(TSS16_SEL, 0, 0x85))),
     "16-bit TSS"),
    (lambda cpu: cpu.uc.mem_write(NEW_TSS, new_tss(eflags=0x20002)), "virtual-8086"),
    (lambda cpu: cpu.uc.mem_write(NEW_TSS, new_tss(ss=0x1234)), "SS"),
], ids=["a 16-bit TSS", "virtual-8086 mode", "a bad SS after the switch"])
def test_what_is_not_modelled_ends_the_run_with_a_reason(setup, why):
    cpu = machine()
    setup(cpu)
    with pytest.raises(UnmodelledTaskSwitch, match=why):
        deliver(CpuView(cpu), TASK_VECTOR, EventKind.SOFTWARE, None, AT)


def test_a_view_without_the_cpu_cannot_switch_tasks():
    view = TablesOnly(machine())
    assert not isinstance(view, TaskSwitchView)
    with pytest.raises(UnmodelledTaskSwitch, match="task gate"):
        deliver(view, TASK_VECTOR, EventKind.SOFTWARE, None, AT)


# == whole guests ==================================================================================
@pytest.mark.parametrize("name", ["taskgate_gp", "taskgate_int", "taskgate_call", "taskgate_bad"])
def test_the_task_gate_guests_print_what_qemu_printed_under_native(name):
    result = run_image(GUESTS / f"{name}.S", technique="native", max_instructions=5_000_000)
    assert result.console == (GUESTS / "expected" / f"{name}.txt").read_bytes(), result.halted_reason
    assert result.exit_code == int((GUESTS / "expected" / f"{name}.exit").read_text())


TRAP_GUEST = """
main:
    mov edi, idt + 0x200                # vector 0x40: a task gate to the runtime's TSS
    mov dword ptr [edi], 0x00280000
    mov dword ptr [edi + 4], 0x00008500
    call idt_load
    int 0x40
    mov al, 0
    ret
.include "{runtime}"
"""


def test_trap_switches_tasks_through_a_task_gate_as_native_does(tmp_path):
    """trap keeps TR virtual and switches the virtual task (``VirtualTaskCpu``) with the machine's
    one switch: the same outcome as under native, here the refusal of a new task whose CS is
    null (the runtime's TSS holds no task), never a Python error."""
    source = tmp_path / "taskgate_trap.S"
    source.write_text(TRAP_GUEST.format(runtime=GUESTS / "runtime.S"))

    def outcome(technique: str) -> str:
        try:
            result = run_image(source, technique=technique, max_instructions=1_000_000)
        except UnsupportedGuest as refusal:
            return str(refusal)
        return result.halted_reason

    assert outcome("trap") == outcome("native")
    assert "CS is null" in outcome("trap")
