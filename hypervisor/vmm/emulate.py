"""The emulator of privileged instructions: decode, check, act on virtual state, advance.

Every handler has SimpleVisor's shape: it receives the decoded instruction, checks the
privilege the hardware would check (CPL 0, or CPL <= IOPL for cli/sti), changes the
*virtual* CPU (never the real privileged state the monitor depends on), and returns;
the dispatcher then moves EIP past the instruction — unless the handler moved it
itself (``iret``, ``sysenter``, ``sysexit``). A guest mistake is raised as the fault the
CPU would raise (``GuestFault``), never handled here.

The emulator knows no technique. It works through a small interface, ``Emulated``:
the virtual CPU state, the guest's registers, memory by linear address (which raises
``GuestFault`` as the MMU would), and a few notifications a technique acts on (its
GDT changed, CR0 changed, ...). Trap-and-emulate provides it today; binary
translation's callouts and VT-x exits will provide it too.
"""
from __future__ import annotations

import struct
from typing import Callable, Protocol

from ..machine.faults import GuestFault
from ..machine.interrupts import GP, NP, UD
from .decode import Instruction, Mem, Reg
from .exits import ExitReason
from .vcpu import VirtualCpu

CR0_PG = 1 << 31
CR0_TS = 1 << 3
CR4_DE = 1 << 3
LDT_TYPE = 0x2
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
# Bits an MSR keeps, where fewer than 64 (QEMU's model, the reference): SYSENTER_CS is 16 bits.
MSR_WIDTH_MASK = {MSR_SYSENTER_CS: 0xFFFF}
CONTROL_REGISTERS = {"cr0": 0, "cr2": 2, "cr3": 3, "cr4": 4}
DEBUG_REGISTERS = {f"dr{n}": n for n in range(8)}


class Unemulated(Exception):
    """Not an instruction the emulator handles: the fault was the guest's own, reflect it."""


class Emulated(Protocol):
    """What the emulator needs of a technique."""
    vcpu: VirtualCpu

    def read_register(self, name: str) -> int: ...
    def write_register(self, name: str, value: int) -> None: ...
    def operand_value(self, op, size: int = 4) -> int: ...
    def effective_address(self, mem: Mem) -> int: ...
    def segment_base(self, segment: str) -> int: ...
    def read_linear(self, address: int, length: int) -> bytes: ...
    # notifications: the technique's shadow state follows the virtual state
    def gdt_loaded(self) -> None: ...
    def load_task_register(self, selector: int) -> None: ...
    def load_stack_segment(self, selector: int) -> None: ...
    def control_register_written(self, n: int, old: int, value: int) -> None: ...
    def invalidate_page(self, linear: int) -> None: ...
    def interrupt_flag_set(self) -> None: ...
    def iret(self, insn: Instruction) -> None: ...
    def retf(self, insn: Instruction) -> None: ...
    def gdt_descriptor(self, selector: int): ...
    def load_ldt(self, selector: int, descriptor) -> None: ...
    def sysenter_transfer(self) -> None: ...
    def sysexit_transfer(self) -> None: ...


def require_cpl0(m: Emulated) -> None:
    if m.vcpu.cpl != 0:
        raise GuestFault(GP, 0, why=f"a privileged instruction at CPL {m.vcpu.cpl}")


def require_iopl(m: Emulated) -> None:
    if m.vcpu.cpl > m.vcpu.iopl:
        raise GuestFault(GP, 0, why=f"cli/sti at CPL {m.vcpu.cpl} above IOPL {m.vcpu.iopl}")


def cli(m, insn):
    require_iopl(m)
    m.vcpu.iflag = False
    return ExitReason.INTERRUPT_FLAG, "cli traps in the deprivileged guest; the monitor clears the virtual IF"


def sti(m, insn):
    require_iopl(m)
    m.vcpu.iflag = True
    m.interrupt_flag_set()
    return ExitReason.INTERRUPT_FLAG, "sti traps in the deprivileged guest; the monitor sets the virtual IF"


def hlt(m, insn):
    require_cpl0(m)
    return ExitReason.HLT, "hlt traps at ring 1; the monitor idles the vCPU until a virtual interrupt"


def mov(m, insn):
    dst, src = insn.operands
    for op in (dst, src):
        if isinstance(op, Reg) and op.name.startswith("cr"):
            return _mov_cr(m, insn, dst, src)
        if isinstance(op, Reg) and op.name.startswith("dr"):
            return _mov_dr(m, insn, dst, src)
    if isinstance(dst, Reg) and dst.name == "ss":
        m.load_stack_segment(m.operand_value(src, 2))
        return ExitReason.SEGMENT_LOAD, "mov ss with an RPL-0 selector faults in ring 1; the monitor loads it"
    raise Unemulated(insn.text)


def _mov_cr(m, insn, dst, src):
    require_cpl0(m)
    to_cr = isinstance(dst, Reg) and dst.name.startswith("cr")
    n = CONTROL_REGISTERS.get((dst if to_cr else src).name)
    if n is None:
        raise GuestFault(UD, why=f"{insn.text}: no such control register")
    v = m.vcpu
    if to_cr:
        value = m.operand_value(src)
        old = v.control_register(n)
        v.set_control_register(n, value)
        m.control_register_written(n, old, value)
        return ExitReason.CR_ACCESS, f"mov to CR{n} traps at ring 1; the monitor writes the virtual CR{n}"
    m.write_register(dst.name, v.control_register(n))
    return ExitReason.CR_ACCESS, f"mov from CR{n} traps at ring 1; the monitor returns the virtual CR{n}"


def _mov_dr(m, insn, dst, src):
    require_cpl0(m)
    to_dr = isinstance(dst, Reg) and dst.name.startswith("dr")
    n = DEBUG_REGISTERS[(dst if to_dr else src).name]
    if n in (4, 5):
        if m.vcpu.cr4 & CR4_DE:
            raise GuestFault(UD, why=f"DR{n} with CR4.DE set")
        n += 2                                  # DR4/DR5 alias DR6/DR7
    if to_dr:
        m.vcpu.dr[n] = m.operand_value(src)
        return ExitReason.DR_ACCESS, "mov to a debug register traps at ring 1; emulated on virtual DRs"
    m.write_register(dst.name, m.vcpu.dr[n])
    return ExitReason.DR_ACCESS, "mov from a debug register traps at ring 1; emulated on virtual DRs"


def _table_operand(m, insn) -> tuple[int, int]:
    op = insn.operands[0] if insn.operands else None
    if not isinstance(op, Mem):
        raise GuestFault(UD, why=f"{insn.text}: a register operand")
    limit, base = struct.unpack("<HI", m.read_linear(m.effective_address(op), 6))
    if 0x66 in insn.prefixes:
        base &= 0x00FFFFFF                      # 16-bit operand size: a 24-bit base
    return base, limit


def lgdt(m, insn):
    require_cpl0(m)
    m.vcpu.gdt_base, m.vcpu.gdt_limit = _table_operand(m, insn)
    m.gdt_loaded()
    return ExitReason.GDTR_IDTR_ACCESS, "lgdt traps at ring 1; the monitor records the guest GDT and rebuilds its shadow"


def lidt(m, insn):
    require_cpl0(m)
    m.vcpu.idt_base, m.vcpu.idt_limit = _table_operand(m, insn)
    return ExitReason.GDTR_IDTR_ACCESS, "lidt traps at ring 1; the monitor records the guest IDT it will deliver through"


def lldt(m, insn):
    require_cpl0(m)
    selector = m.operand_value(insn.operands[0], 2)
    d = None
    if selector & 0xFFFC:
        d = m.gdt_descriptor(selector)
        if not d.system or d.type != LDT_TYPE:
            raise GuestFault(GP, selector & 0xFFFC, why=f"lldt {selector:#x}: not an LDT descriptor")
        if not d.present:
            raise GuestFault(NP, selector & 0xFFFC, why=f"lldt {selector:#x}: not present")
    m.load_ldt(selector, d)
    return ExitReason.LDTR_TR_ACCESS, "lldt traps at ring 1; the monitor loads the virtual LDTR and a checked copy of the LDT"


def ltr(m, insn):
    require_cpl0(m)
    m.load_task_register(m.operand_value(insn.operands[0], 2))
    return ExitReason.LDTR_TR_ACCESS, "ltr traps at ring 1; the monitor records the guest TSS (its SS0:ESP0 is used for delivery)"


def lmsw(m, insn):
    require_cpl0(m)
    value = m.operand_value(insn.operands[0], 2)
    v = m.vcpu
    old = v.cr0
    # lmsw sets PE/MP/EM/TS and can set but never clear PE.
    v.cr0 = (old & ~0xE) | (value & 0xF) | (old & 1)
    m.control_register_written(0, old, v.cr0)
    return ExitReason.CR_ACCESS, "lmsw traps at ring 1; the monitor writes the low bits of the virtual CR0"


def clts(m, insn):
    require_cpl0(m)
    old = m.vcpu.cr0
    m.vcpu.cr0 &= ~CR0_TS
    m.control_register_written(0, old, m.vcpu.cr0)
    return ExitReason.CR_ACCESS, "clts traps at ring 1; the monitor clears the virtual CR0.TS"


def invlpg(m, insn):
    require_cpl0(m)
    mem = insn.operands[0] if insn.operands else None
    if isinstance(mem, Mem):
        m.invalidate_page(m.effective_address(mem))
    return ExitReason.INVLPG, "invlpg traps at ring 1; the monitor drops the page's translation from the shadow (the TLB)"


def rdmsr(m, insn):
    require_cpl0(m)
    value = m.vcpu.msrs.get(m.read_register("ecx"), 0)
    m.write_register("eax", value & 0xFFFFFFFF)
    m.write_register("edx", value >> 32)
    return ExitReason.RDMSR, "rdmsr traps at ring 1; the monitor answers from the virtual MSRs"


def wrmsr(m, insn):
    require_cpl0(m)
    ecx = m.read_register("ecx")
    value = m.read_register("edx") << 32 | m.read_register("eax")
    m.vcpu.msrs[ecx] = value & MSR_WIDTH_MASK.get(ecx, (1 << 64) - 1)
    return ExitReason.WRMSR, "wrmsr traps at ring 1; the monitor writes the virtual MSR"


def wbinvd(m, insn):
    require_cpl0(m)
    return ExitReason.WBINVD, "wbinvd traps at ring 1; caches are not modelled, so it is a no-op"


def invd(m, insn):
    require_cpl0(m)
    return ExitReason.INVD, "invd traps at ring 1; caches are not modelled, so it is a no-op"


def pop(m, insn):
    if insn.operands and isinstance(insn.operands[0], Reg) and insn.operands[0].name == "ss":
        esp = m.read_register("esp")
        selector = int.from_bytes(m.read_linear((m.segment_base("ss") + esp) & 0xFFFFFFFF, 2), "little")
        m.load_stack_segment(selector)
        m.write_register("esp", (esp + 4) & 0xFFFFFFFF)
        return ExitReason.SEGMENT_LOAD, "pop ss with an RPL-0 selector faults in ring 1; the monitor loads it"
    raise Unemulated(insn.text)


def iret(m, insn):
    m.iret(insn)
    return ExitReason.IRET, "iret: the monitor pops the frame and resumes the guest at its ring"


def retf(m, insn):
    m.retf(insn)
    return ExitReason.IRET, "retf: the monitor pops the frame and resumes the guest at its ring"


def sysenter(m, insn):
    if not m.vcpu.msrs.get(MSR_SYSENTER_CS, 0) & 0xFFFC:
        raise GuestFault(GP, 0, why="sysenter with SYSENTER_CS null")
    m.sysenter_transfer()
    return ExitReason.SYSTEM_CALL, "sysenter: the monitor enters the guest kernel at SYSENTER_CS:SYSENTER_EIP"


def sysexit(m, insn):
    if not m.vcpu.msrs.get(MSR_SYSENTER_CS, 0) & 0xFFFC or m.vcpu.cpl != 0:
        raise GuestFault(GP, 0, why="sysexit with SYSENTER_CS null or above CPL 0")
    m.sysexit_transfer()
    return ExitReason.SYSTEM_CALL, "sysexit: the monitor returns to guest user mode at EDX with ESP=ECX"


# Handlers that move EIP themselves; for the rest the dispatcher advances past the instruction.
TRANSFERS = frozenset({"iret", "iretd", "retf", "sysenter", "sysexit"})

EMULATORS: dict[str, Callable] = {
    "cli": cli, "sti": sti, "hlt": hlt, "mov": mov, "lgdt": lgdt, "lidt": lidt, "lldt": lldt,
    "ltr": ltr, "lmsw": lmsw, "clts": clts, "invlpg": invlpg, "rdmsr": rdmsr, "wrmsr": wrmsr,
    "wbinvd": wbinvd, "invd": invd, "pop": pop, "iret": iret, "iretd": iret,
    "retf": retf, "sysenter": sysenter, "sysexit": sysexit,
}
