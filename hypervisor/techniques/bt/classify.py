"""What the translator does with each guest instruction: copy it, rewrite a branch, or call out.

x86 breaks Popek and Goldberg's rule in seventeen places: instructions that read or change
privileged state yet do not trap when the kernel runs deprivileged (``pushf``, ``sgdt``,
``mov ax, cs``, ...; hypervisor/vmm/vmcs.py tells the story). A binary translator fixes that in
software: it reads the guest kernel's code before it runs, copies every innocent instruction
unchanged (IDENT, in VMware's word), and replaces every privileged and every sensitive one with a
*callout* into the monitor, which performs it on the virtual CPU. Branches are rewritten too,
because translated code lives at other addresses than the guest's: a relative branch is aimed at
its target's translation, and a branch whose target is computed at run time (``ret``, ``jmp eax``)
goes through a lookup.

``classify`` is pure (an instruction in, a ``Kind`` out), so the whole table can be tested
without a CPU. It errs on the side of calling out: an instruction it does not know to be
innocent in kernel code is not copied.
"""
from __future__ import annotations

import enum

from ...vmm.decode import Imm, Instruction, Mem, Reg, SEGMENT_REGISTERS


class Kind(enum.Enum):
    IDENT = "ident"                  # copied unchanged
    JUMP = "jmp"                     # jmp rel: to the target's translation
    BRANCH = "jcc"                   # jcc rel: taken to the target's, else the next instruction's
    LOOP = "loop"                    # loop/loope/loopne/jecxz (rel8 only): as jcc, by a trampoline
    CALL = "call"                    # call rel32: push the guest's return address, jump
    RETURN = "ret"                   # ret: the lookup, with the target on the stack
    JUMP_INDIRECT = "jmp-indirect"   # jmp r/m32: push the target, the lookup
    CALL_INDIRECT = "call-indirect"  # call r/m32: push the return address and the target, the lookup
    TRAP = "trap"                    # int n, int3, into, int1: copied; the CPU raises, the block ends
    CALLOUT = "callout"              # the monitor performs it (privileged or sensitive)


# Why each called-out mnemonic is called out: the lecture's words, for traces and `hv translate`.
_PRIVILEGED = {
    "cli": "clears IF: privileged (IOPL)", "sti": "sets IF: privileged (IOPL)",
    "hlt": "halts the CPU: privileged", "lgdt": "loads GDTR: privileged", "lidt": "loads IDTR: privileged",
    "lldt": "loads LDTR: privileged", "ltr": "loads TR: privileged", "lmsw": "writes CR0: privileged",
    "clts": "clears CR0.TS: privileged", "invd": "cache control: privileged",
    "wbinvd": "cache control: privileged", "invlpg": "TLB control: privileged",
    "rdmsr": "reads an MSR: privileged", "wrmsr": "writes an MSR: privileged",
    "rdpmc": "reads a counter: privileged unless CR4.PCE", "iret": "returns from an event: privileged state",
    "iretd": "returns from an event: privileged state", "retf": "far return: loads CS",
    "ljmp": "far jump: loads CS", "lcall": "far call: loads CS",
    "sysenter": "enters the kernel: loads CS/SS from MSRs", "sysexit": "leaves the kernel: privileged",
    "syscall": "enters the kernel (#UD on this CPU model)", "sysret": "leaves the kernel (#UD on this CPU model)",
    "in": "port I/O: privileged (IOPL, the bitmap)", "out": "port I/O: privileged (IOPL, the bitmap)",
    "insb": "port I/O", "insw": "port I/O", "insd": "port I/O",
    "outsb": "port I/O", "outsw": "port I/O", "outsd": "port I/O",
}
_SENSITIVE = {
    "pushf": "pushes EFLAGS: shows the real IF and IOPL, sensitive but not privileged",
    "pushfd": "pushes EFLAGS: shows the real IF and IOPL, sensitive but not privileged",
    "popf": "loads EFLAGS: silently keeps IF and IOPL when deprivileged, sensitive but not privileged",
    "popfd": "loads EFLAGS: silently keeps IF and IOPL when deprivileged, sensitive but not privileged",
    "sgdt": "stores GDTR: shows the monitor's GDT, sensitive but not privileged",
    "sidt": "stores IDTR: shows the monitor's IDT, sensitive but not privileged",
    "sldt": "stores LDTR: sensitive but not privileged", "str": "stores TR: sensitive but not privileged",
    "smsw": "stores CR0's low bits: sensitive but not privileged",
    "lar": "reads a descriptor's rights: sees the shadow's DPLs", "lsl": "reads a segment limit: sees the shadow",
    "verr": "checks a segment against the CPL: sees the real CPL",
    "verw": "checks a segment against the CPL: sees the real CPL",
    "cpuid": "identifies the CPU: the monitor answers (VT-x exits on it too)",
}
_LOOPS = frozenset({"loop", "loope", "loopne", "jecxz", "jcxz"})
_TRAPS = frozenset({"int", "int3", "into", "int1"})
_CONTROL_REGISTER = ("cr", "dr")


def reads_segment_register(name: str, insn: Instruction) -> bool:
    """mov r/m, sreg or push sreg. (A segment *load* runs as under trap: through the shadow GDT,
    or a fault the monitor handles.)"""
    ops = insn.operands
    if name == "push":
        return bool(ops) and isinstance(ops[0], Reg) and ops[0].name in SEGMENT_REGISTERS
    return name == "mov" and len(ops) == 2 and isinstance(ops[1], Reg) and ops[1].name in SEGMENT_REGISTERS


def _is_far(insn: Instruction) -> bool:
    """FF /3 (call far) or FF /5 (jmp far) through memory: the ModRM's reg field says which
    (capstone gives the far call a 4-byte operand)."""
    raw = insn.raw[len(insn.prefixes):]
    return raw[:1] == b"\xff" and len(raw) > 1 and (raw[1] >> 3) & 7 in (3, 5)


def why_called_out(insn: Instruction, guest_cs_base: int = 0) -> str | None:
    """Why ``insn`` must be a callout in kernel code, or None if it may be copied or rewritten."""
    name = insn.mnemonic.split()[-1]
    if name in _PRIVILEGED:
        return _PRIVILEGED[name]
    if name in _SENSITIVE:
        return _SENSITIVE[name]
    if name in ("jmp", "call") and _is_far(insn):
        return "far jump or call through memory: loads CS"
    if name == "ret" and insn.operands:
        return "ret imm16: the lookup stub pops one word only"
    if name == "mov" and any(isinstance(op, Reg) and op.name.startswith(_CONTROL_REGISTER) for op in insn.operands):
        return "moves to or from a control or debug register: privileged"
    if reads_segment_register(name, insn):
        return "reads a segment register: CS and SS would show the real RPL, not the virtual ring"
    if 0x66 in insn.prefixes and (name in ("call", "ret", "jmp") or name in _LOOPS):
        return "a 16-bit control transfer (EIP cut to 16 bits)"
    if guest_cs_base and any(isinstance(op, Mem) and op.segment == "cs" for op in insn.operands):
        return "reads through CS, whose base the translated code does not have"
    return None


def classify(insn: Instruction, guest_cs_base: int = 0) -> Kind:
    """What the translator does with ``insn``, found in guest kernel code whose CS has this base."""
    if why_called_out(insn, guest_cs_base) is not None:
        return Kind.CALLOUT
    name = insn.mnemonic.split()[-1]
    if name in _TRAPS:
        return Kind.TRAP
    if name in _LOOPS:
        return Kind.LOOP
    ops = insn.operands
    if name in ("jmp", "call") and ops and isinstance(ops[0], Mem) and _is_far(insn):
        return Kind.CALLOUT                        # jmp/call far through memory (m16:32): loads CS
    if name == "jmp":
        return Kind.JUMP if isinstance(ops[0], Imm) else Kind.JUMP_INDIRECT
    if name == "call":
        return Kind.CALL if isinstance(ops[0], Imm) else Kind.CALL_INDIRECT
    if name == "ret":
        return Kind.RETURN
    if name.startswith("j"):
        return Kind.BRANCH
    return Kind.IDENT


def ends_block(kind: Kind, insn: Instruction) -> bool:
    """Does the translated block end after this instruction? Every control transfer ends it, and a
    callout that may transfer control or change how code is fetched (the monitor decides where
    to go on)."""
    if kind is Kind.CALLOUT:
        name = insn.mnemonic.split()[-1]
        return name in ("iret", "iretd", "retf", "ljmp", "lcall", "jmp", "call", "ret", "sysenter",
                        "sysexit", "syscall", "sysret", "hlt", "lgdt", "lidt", "lldt", "ltr", "lmsw", "clts") or (
            name == "mov" and any(isinstance(op, Reg) and op.name in ("cr0", "cr3", "cr4")
                                  for op in insn.operands[:1]))
    return kind is not Kind.IDENT
