"""One exit vocabulary for every technique.

Whatever makes control leave the guest — a #GP from a deprivileged instruction, an
``out`` to a device, a hypercall, a VT-x exit — is recorded as an ``ExitReason``.
The numbers are Intel's basic exit reasons (SDM Vol. 3, Appendix C), so an exit under
trap-and-emulate and the same exit under VT-x line up; events that only software
techniques have (a reflected fault, an emulated ``iret``, a translation, a hypercall)
are numbered from 256 on.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExitReason(enum.IntEnum):
    EXCEPTION_NMI = 0            # a guest fault or int n, delivered through the guest's IDT
    EXTERNAL_INTERRUPT = 1       # a PIC interrupt injected into the guest
    TRIPLE_FAULT = 2
    INTERRUPT_WINDOW = 7         # the guest became able to take a pending interrupt
    TASK_SWITCH = 9
    CPUID = 10
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    GDTR_IDTR_ACCESS = 46
    MONITOR_TRAP_FLAG = 37       # one instruction was run on its own (an interrupt shadow)
    LDTR_TR_ACCESS = 47
    EPT_VIOLATION = 48
    PREEMPTION_TIMER = 52        # the slice ended: a timer deadline or the instruction budget
    WBINVD = 54
    # Software-only events (no VT-x counterpart).
    INTERRUPT_FLAG = 256         # cli / sti / popf trapped and emulated on the virtual IF
    IRET = 257                   # iret emulated by the monitor (ring compression)
    SEGMENT_LOAD = 258           # a selector load the deprivileged CPU refused
    IDLE = 259                   # the guest halted; virtual time skipped to the next event
    TRANSLATION = 260            # binary translation of a guest block
    CALLOUT = 261                # translated code called out to the monitor
    SHADOW_PAGE_FAULT = 262
    HYPERCALL = 263
    SYSTEM_CALL = 264            # sysenter / sysexit / syscall emulated by the monitor
    GUEST_CRASH = 265            # the guest did something the machine cannot continue from
    TABLE_WRITE = 266            # a write to a write-protected guest table (the GDT; page tables later)
    MMIO = 267                   # a load or store reached a memory-mapped device (under hvm: an EPT violation)

    @property
    def label(self) -> str:
        return self.name.lower()


REASON_BY_LABEL = {r.label: r for r in ExitReason}


@dataclass(slots=True)     # made on every event: a frozen dataclass costs ~1 µs more to build
class Exit:
    """One return of control to the monitor, whatever caused it.

    Hooks, the end of a slice, a fault, a ``hlt``, a timer deadline: each becomes one
    of these, and the run loop hands it to the handler its ``reason`` names. ``eip`` is
    where the guest was; ``length`` the length of the instruction that caused it (0
    when it was not an instruction), so "advance past it" is one line, written once.
    """
    reason: ExitReason
    eip: int = 0
    length: int = 0
    vector: int | None = None          # EXCEPTION_NMI: the vector raised
    error_code: int | None = None      # EXCEPTION_NMI: the error code the CPU pushed
    software: bool = False             # EXCEPTION_NMI: raised by int n / int3 / into
    address: int | None = None         # TABLE_WRITE: the guest-physical address written; EPT_VIOLATION: the guest-physical address
    linear: int | None = None          # EXCEPTION_NMI #PF: the faulting linear address (CR2); EPT_VIOLATION: the guest-linear address
    qualification: int | None = None   # EPT_VIOLATION: the exit qualification (SDM layout)
    detail: str = ""                   # a crash's explanation, for GUEST_CRASH


@dataclass
class ExitStats:
    """Per-reason exit counts."""
    counts: dict[ExitReason, int] = field(default_factory=dict)

    def add(self, reason: ExitReason, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n

    def as_dict(self) -> dict[str, int]:
        return {r.label: n for r, n in sorted(self.counts.items())}

    @property
    def total(self) -> int:
        return sum(self.counts.values())
