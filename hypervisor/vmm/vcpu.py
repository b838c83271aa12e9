"""Virtual CPU state: what the guest *believes* its privileged registers hold.

Under trap-and-emulate the guest kernel runs in ring 1, so its IF, control registers
and descriptor-table registers cannot be the real ones; the monitor keeps them here
and the emulator of privileged instructions reads and writes them. A dataclass, so
that a test can compare it field by field with a real CPU that ran the same code at
ring 0 — the Popek-Goldberg *equivalence* property, checked directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field


CR0_ET = 1 << 4


@dataclass
class VirtualCpu:
    cpl: int = 0                 # the guest's privilege level (0: its kernel, really ring 1)
    iflag: bool = False
    iopl: int = 0
    cr0: int = 0x11
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    gdt_base: int = 0
    gdt_limit: int = 0
    idt_base: int = 0
    idt_limit: int = 0
    ldtr: int = 0
    ldt_base: int = 0            # the LDT descriptor lldt cached (a later GDT edit does not move it)
    ldt_limit: int = 0
    tr: int = 0
    tr_base: int = 0
    tr_limit: int = 0
    dr: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400])
    msrs: dict[int, int] = field(default_factory=dict)
    # The instruction count at which an sti / mov ss shadow began, or None: interrupts
    # are held off until one more instruction has retired.
    shadow_from: int | None = None

    def control_register(self, n: int) -> int:
        return (self.cr0, 0, self.cr2, self.cr3, self.cr4)[n]

    def set_control_register(self, n: int, value: int) -> None:
        if n == 0:
            self.cr0 = value | CR0_ET       # hardwired to 1 (QEMU's cpu_x86_update_cr0 forces it)
        elif n == 2:
            self.cr2 = value
        elif n == 3:
            self.cr3 = value
        elif n == 4:
            self.cr4 = value
        else:
            raise ValueError(f"CR{n} is not a control register the CPU has")

    def architectural(self) -> dict:
        """The state an equivalence test compares (what the guest could observe at ring 0)."""
        return {"if": self.iflag, "cr0": self.cr0, "cr2": self.cr2, "cr3": self.cr3, "cr4": self.cr4,
                "gdtr": (self.gdt_base, self.gdt_limit), "idtr": (self.idt_base, self.idt_limit),
                "msrs": dict(sorted(self.msrs.items()))}
