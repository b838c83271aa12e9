"""The emulator of privileged instructions: decode, act on virtual state, advance, resume.

Every handler has SimpleVisor's shape: it receives the decoded instruction, changes
the *virtual* CPU (never the real privileged state the monitor depends on), and the
dispatcher then moves EIP past the instruction. Handlers return the exit reason and
a sentence for the trace. Trap-and-emulate calls this on each #GP from the guest
kernel; later techniques (binary translation callouts, VT-x exits) call the same table.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from ..machine.cpu import EAX, ECX, EDX, ESP, GPR_BY_NAME
from .exits import ExitReason

if TYPE_CHECKING:
    from ..techniques.trap import TrapAndEmulate

CR0_PG = 1 << 31
CR0_TS = 1 << 3


class Unemulated(Exception):
    """The instruction is not one the emulator handles (a genuine guest fault, reflect it)."""


def _gpr(name: str) -> int:
    return GPR_BY_NAME[name]


def _operand_value(m: "TrapAndEmulate", op, size: int = 4) -> int:
    value = m.operand_value(op, size)
    if value is None:
        raise Unemulated(f"operand {op}")
    return value


def cli(m, insn):
    m.vcpu.iflag = False
    return ExitReason.INTERRUPT_FLAG, "cli at ring 1 faults; the monitor clears the virtual IF"


def sti(m, insn):
    m.vcpu.iflag = True
    m.after_sti()
    return ExitReason.INTERRUPT_FLAG, "sti at ring 1 faults; the monitor sets the virtual IF"


def hlt(m, insn):
    return ExitReason.HLT, "hlt at ring 1 faults; the monitor idles the vCPU until a virtual interrupt"


def mov(m, insn):
    dst, src = insn.operands
    if dst[0] == "reg" and dst[1].startswith("cr"):
        value = _operand_value(m, src)
        n = int(dst[1][2:])
        if n == 0:
            if value & CR0_PG:
                m.unsupported_paging(value)
            m.vcpu.cr0 = value
        elif n in (2, 3, 4):
            setattr(m.vcpu, f"cr{n}", value)
        else:
            raise Unemulated(insn.text)
        return ExitReason.CR_ACCESS, f"mov to CR{n} faults at ring 1; the monitor writes the virtual CR{n}"
    if src[0] == "reg" and src[1].startswith("cr"):
        n = int(src[1][2:])
        m.cpu.write(_gpr(dst[1]), getattr(m.vcpu, f"cr{n}"))
        return ExitReason.CR_ACCESS, f"mov from CR{n} faults at ring 1; the monitor returns the virtual CR{n}"
    if dst[0] == "reg" and dst[1].startswith("dr"):
        m.vcpu.dr[int(dst[1][2:])] = _operand_value(m, src)
        return ExitReason.DR_ACCESS, "mov to a debug register faults at ring 1; emulated on virtual DRs"
    if src[0] == "reg" and src[1].startswith("dr"):
        m.cpu.write(_gpr(dst[1]), m.vcpu.dr[int(src[1][2:])])
        return ExitReason.DR_ACCESS, "mov from a debug register faults at ring 1; emulated on virtual DRs"
    if dst[0] == "reg" and dst[1] == "ss":
        m.load_stack_segment(_operand_value(m, src, 2))
        return ExitReason.SEGMENT_LOAD, "mov ss with an RPL-0 selector faults in ring 1; the monitor loads it at RPL 1"
    raise Unemulated(insn.text)


def _table(m, insn):
    op = insn.operands[0]
    if op[0] != "mem":
        raise Unemulated(insn.text)
    limit, base = struct.unpack("<HI", m.read_linear(m.effective_address(op[1]), 6))
    return base, limit


def lgdt(m, insn):
    m.vcpu.gdt_base, m.vcpu.gdt_limit = _table(m, insn)
    m.rebuild_shadow_gdt()
    return ExitReason.GDTR_IDTR_ACCESS, "lgdt faults at ring 1; the monitor records the guest GDT and rebuilds its shadow (ring 0 -> 1)"


def lidt(m, insn):
    m.vcpu.idt_base, m.vcpu.idt_limit = _table(m, insn)
    return ExitReason.GDTR_IDTR_ACCESS, "lidt faults at ring 1; the monitor records the guest IDT it will deliver through"


def lldt(m, insn):
    m.vcpu.ldtr = _operand_value(m, insn.operands[0], 2)
    return ExitReason.LDTR_TR_ACCESS, "lldt faults at ring 1; recorded in the virtual LDTR"


def ltr(m, insn):
    m.load_task_register(_operand_value(m, insn.operands[0], 2))
    return ExitReason.LDTR_TR_ACCESS, "ltr faults at ring 1; the monitor records the guest TSS (its SS0:ESP0 is used for delivery)"


def lmsw(m, insn):
    value = _operand_value(m, insn.operands[0], 2)
    # lmsw sets PE/MP/EM/TS and can set but never clear PE.
    m.vcpu.cr0 = (m.vcpu.cr0 & ~0xE) | (value & 0xF) | (m.vcpu.cr0 & 1)
    return ExitReason.CR_ACCESS, "lmsw faults at ring 1; the monitor writes the low bits of the virtual CR0"


def clts(m, insn):
    m.vcpu.cr0 &= ~CR0_TS
    return ExitReason.CR_ACCESS, "clts faults at ring 1; the monitor clears the virtual CR0.TS"


def invlpg(m, insn):
    return ExitReason.INVLPG, "invlpg faults at ring 1; with paging off there is no TLB entry to drop"


def rdmsr(m, insn):
    value = m.vcpu.msrs.get(m.cpu.read(ECX) & 0xFFFFFFFF, 0)
    m.cpu.write(EAX, value & 0xFFFFFFFF)
    m.cpu.write(EDX, value >> 32)
    return ExitReason.RDMSR, "rdmsr faults at ring 1; the monitor answers from the virtual MSRs"


# Bits an MSR keeps, where fewer than 64 (QEMU's model, the reference): SYSENTER_CS is 16 bits.
MSR_WIDTH_MASK = {0x174: 0xFFFF}


def wrmsr(m, insn):
    ecx = m.cpu.read(ECX) & 0xFFFFFFFF
    value = (m.cpu.read(EDX) & 0xFFFFFFFF) << 32 | (m.cpu.read(EAX) & 0xFFFFFFFF)
    m.vcpu.msrs[ecx] = value & MSR_WIDTH_MASK.get(ecx, (1 << 64) - 1)
    return ExitReason.WRMSR, "wrmsr faults at ring 1; the monitor writes the virtual MSR"


def wbinvd(m, insn):
    return ExitReason.WBINVD, "wbinvd faults at ring 1; caches are not modelled, so it is a no-op"


def invd(m, insn):
    return ExitReason.INVD, "invd faults at ring 1; caches are not modelled, so it is a no-op"


def pop(m, insn):
    if insn.operands and insn.operands[0] == ("reg", "ss"):
        esp = m.cpu.read(ESP)
        selector = int.from_bytes(m.read_linear(esp, 2), "little")
        m.load_stack_segment(selector)
        m.cpu.write(ESP, (esp + 4) & 0xFFFFFFFF)
        return ExitReason.SEGMENT_LOAD, "pop ss with an RPL-0 selector faults in ring 1; the monitor loads it at RPL 1"
    raise Unemulated(insn.text)


EMULATORS: dict[str, Callable] = {
    "cli": cli, "sti": sti, "hlt": hlt, "mov": mov, "lgdt": lgdt, "lidt": lidt, "lldt": lldt,
    "ltr": ltr, "lmsw": lmsw, "clts": clts, "invlpg": invlpg, "rdmsr": rdmsr, "wrmsr": wrmsr,
    "wbinvd": wbinvd, "invd": invd, "pop": pop,
}
