"""The PC every technique presents: CPU, RAM, the port bus and its devices, a virtual clock.

A ``PC`` knows nothing about virtualization techniques. It is the bare machine a
multiboot kernel expects (and what ``qemu-system-i386 -m 64 -kernel`` gives it): RAM
from machine frames, COM1, isa-debug-exit, the PIC pair and the PIT, and the CPU
left in Multiboot's entry state. A technique then decides how the guest shares this
CPU with a monitor.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from unicorn import UC_PROT_ALL

from ..image.multiboot import BOOT_MAGIC, MULTIBOOT_INFO_ADDR, KernelImage, multiboot_info
from .clock import VirtualClock
from .cpu import CR0, CS, DS, EAX, EBX, EFLAGS, EIP, ES, ESP, FS, GDTR, GS, SS, Cpu
from .descriptors import encode_segment
from .devices import standard_pc_devices
from .devices.bus import PortBus
from .memory import GuestMemory, MachineMemory

# Multiboot leaves the GDTR undefined but CS/DS flat; like QEMU's multiboot loader we
# give the kernel a small boot GDT in low memory (null, null, code 0x10, data 0x18).
BOOT_GDT_ADDR = 0x0500
BOOT_CS, BOOT_DS = 0x10, 0x18
BOOT_GDT = [0, 0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)]


@dataclass
class GuestOutcome:
    """How the guest's run ended, as the machine saw it."""
    exit_code: int | None = None
    halted_reason: str | None = None
    console: bytearray = field(default_factory=bytearray)


class PC:
    """One guest's bare machine."""

    def __init__(self, machine_memory: MachineMemory, ram_bytes: int, on_console=None):
        self.cpu = Cpu()
        self.memory = GuestMemory(machine_memory, ram_bytes)
        self.memory.map_into(self.cpu.uc, UC_PROT_ALL)
        self.clock = VirtualClock()
        self.bus = PortBus()
        self.outcome = GuestOutcome()
        console = self.outcome.console
        if on_console is None:
            tx = console.append
        else:
            def tx(byte: int) -> None:
                console.append(byte)
                on_console(byte)
        self.devices = standard_pc_devices(self.bus, self.clock, tx=tx, on_exit=self._debug_exit)
        self.stop_requested: str | None = None

    # -- events the devices raise -------------------------------------------------------
    def _debug_exit(self, value: int) -> None:
        self.outcome.exit_code = value
        self.request_stop(f"guest wrote {value:#x} to isa-debug-exit")

    def request_stop(self, reason: str) -> None:
        """End the run: called from hooks, so it only records and asks Unicorn to stop."""
        if self.outcome.halted_reason is None:
            self.outcome.halted_reason = reason
        self.stop_requested = reason
        self.cpu.uc.emu_stop()

    # -- boot ---------------------------------------------------------------------------
    def bios_handoff(self) -> None:
        """Leave the PIC and PIT as the PC BIOS (SeaBIOS, under QEMU) leaves them for a kernel.

        Not the chips' reset state: the BIOS has remapped the PICs to vectors 0x08/0x70,
        masked all but the timer and the cascade, and set PIT channel 0 to mode 2 with
        the full 65536 count (18.2 Hz). A kernel that enables interrupts without
        programming the PIC therefore gets IRQ0 on vector 8 after ~55 ms of virtual
        time, as on QEMU, and not an interrupt on vector 0 at once.
        """
        for port, value in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01),
                            (0xA0, 0x11), (0xA1, 0x70), (0xA1, 0x02), (0xA1, 0x01),
                            (0x21, 0xFA), (0xA1, 0xFF),
                            (0x43, 0x34), (0x40, 0x00), (0x40, 0x00)):
            self.bus.write(port, 1, value)

    def load_kernel(self, kernel: KernelImage, cmdline: bytes = b"") -> None:
        for seg in kernel.segments:
            self.memory.write(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)))
        self.memory.write(MULTIBOOT_INFO_ADDR, multiboot_info(self.memory.size, MULTIBOOT_INFO_ADDR, cmdline))
        self.memory.write(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))
        self.bios_handoff()
        cpu = self.cpu
        cpu.set_table_register(GDTR, BOOT_GDT_ADDR, len(BOOT_GDT) * 8 - 1)
        cpu.write(CR0, 0x11)                     # PE | ET, paging off
        cpu.write(CS, BOOT_CS)
        for seg_reg in (SS, DS, ES, FS, GS):
            cpu.write(seg_reg, BOOT_DS)
        cpu.write(EAX, BOOT_MAGIC)
        cpu.write(EBX, MULTIBOOT_INFO_ADDR)
        cpu.write(EFLAGS, 0x2)                   # IF = 0
        cpu.write(ESP, 0x7000)
        cpu.write(EIP, kernel.entry)
