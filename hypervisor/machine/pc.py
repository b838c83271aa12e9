"""The PC every technique presents: CPU, RAM, the port bus and its devices, a virtual clock.

A ``PC`` knows nothing about virtualization techniques. It is the bare machine a
multiboot kernel expects (and what ``qemu-system-i386 -m 64 -kernel`` gives it): RAM
from machine frames, COM1, isa-debug-exit, the PIC pair and the PIT, and the CPU
left in Multiboot's entry state. A technique then decides how the guest shares this
CPU with a monitor.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field

from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

from ..image.multiboot import BOOT_MAGIC, MULTIBOOT_INFO_ADDR, KernelImage, multiboot_info
from . import firmware
from .clock import VirtualClock
from .cpu import CR0, CS, DS, EAX, EBX, EFLAGS, EIP, ES, ESP, FS, GDTR, GS, SS, TR, Cpu
from .descriptors import decode_descriptor, encode_segment, unicorn_flags
from .devices import standard_pc_devices
from .devices.bus import PortBus
from .devices.ioapic import IoApic
from .devices.pic import PicPair
from .devices.lapic import LocalApic
from .devices.testdev import IOMEM_BASE as TESTDEV_IOMEM, IOMEM_SIZE as TESTDEV_IOMEM_SIZE
from .irqs import InterruptRouter
from .memory import GuestMemory, MachineMemory
from .mmio import MmioBus, WindowDevice
from .native.tlbfill import MODE_SHADOW, TlbFill

# Multiboot leaves the GDTR undefined but CS/DS flat; like QEMU's multiboot loader we
# give the kernel a small boot GDT in low memory (null, null, code 0x10, data 0x18).
BOOT_GDT_ADDR = 0x0500
# Under shadow paging, a store to a write-protected guest frame is sent here + its guest-physical
# address, where an MMIO callback performs it and tells the monitor (``shadow_paging``). Above
# 4 GiB, where no guest address reaches, and above trap's monitor memory.
SHADOW_ALIAS = 0x2_0000_0000
BOOT_CS, BOOT_DS = 0x10, 0x18
BOOT_GDT = [0, 0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)]


class DeviceMemory:
    """Guest RAM as a DMA-capable device (fw_cfg) sees it. A device's write lands in RAM the
    way a CPU store does: code translated from those bytes is dropped, and a write-protected
    frame (a shadowed guest table) tells its monitor."""

    def __init__(self, pc: "PC") -> None:
        self._pc = pc
        self.size = pc.memory.size

    def contains(self, paddr: int, length: int = 1) -> bool:
        return self._pc.memory.contains(paddr, length)

    def read(self, paddr: int, length: int) -> bytes:
        return self._pc.memory.read(paddr, length)

    def write(self, paddr: int, data: bytes) -> None:
        pc = self._pc
        pc.memory.write(paddr, data)
        if not data:
            return
        machine, p2m = pc.memory.machine, pc.memory.p2m
        protected = any(machine.is_write_protected(p2m[pfn])
                        for pfn in range(paddr >> 12, ((paddr + len(data) - 1) >> 12) + 1))
        pc.store_landed(paddr, len(data), protected)


@dataclass
class GuestOutcome:
    """How the guest's run ended, as the machine saw it."""
    exit_code: int | None = None
    halted_reason: str | None = None
    console: bytearray = field(default_factory=bytearray)


class PC:
    """One guest's bare machine."""

    def __init__(self, machine_memory: MachineMemory, ram_bytes: int, on_console=None, owner: int = 0):
        self.cpu = Cpu()
        self.memory = GuestMemory(machine_memory, ram_bytes, owner=owner)
        self.memory.map_into(self.cpu.uc, UC_PROT_ALL)
        # While paging is off, the TLB is filled by a C callback that keeps data pages off
        # Unicorn's slow store path (native/tlbfill.py); the run loop calls tlb.after_run.
        self.tlb = TlbFill(self.cpu)
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
        self.ioapic: IoApic | None = None
        self.pic = pic = PicPair()
        self.devices = standard_pc_devices(self.bus, self.clock, tx=tx, on_exit=self._debug_exit,
                                           memory=DeviceMemory(self), isa_irq=self._isa_irq, pic=pic)
        # The APICs, as QEMU's pc machine wires them: the PIC reaches the core through the
        # local APIC's LINT0, every ISA line also reaches an I/O APIC input (irqs.py), and the
        # I/O APIC's messages go to the local APIC, whose EOIs come back for level inputs.
        self.lapic = LocalApic(self.clock)
        self.ioapic = IoApic(self.lapic.deliver_message, self.clock, extint_vector=pic.acknowledge)
        self.lapic.on_eoi = self.ioapic.eoi
        self.mmio = MmioBus(self.cpu)
        self.mmio.register(self.lapic, LocalApic.BASE, LocalApic.SIZE, wider="refuse")
        self.mmio.register(self.ioapic, IoApic.BASE, IoApic.SIZE)
        self.mmio.register(WindowDevice(self.devices.testdev), TESTDEV_IOMEM, TESTDEV_IOMEM_SIZE)
        self.irqs = InterruptRouter(pic, self.lapic, self.ioapic, self.devices.pit)
        self.stop_requested: str | None = None
        # Write protection of guest frames (a monitor's shadow of a guest table follows it),
        # and of the monitor's own memory, which no guest write may change.
        self.on_write_protected = None
        self.on_monitor_write = None
        self._write_hooks: dict[tuple[int, int], int] = {}
        self._monitor_regions: list[tuple[int, int, mmap.mmap]] = []

    # -- events the devices raise -------------------------------------------------------
    def _isa_irq(self, line: int, level: bool) -> None:
        """An ISA interrupt line: to the PIC's input and to the I/O APIC's (QEMU's gsi_handler;
        the I/O APIC itself takes line 0 on its input 2)."""
        self.pic.set_irq(line, level)
        if self.ioapic is not None:
            self.ioapic.set_irq(line, level)

    def _debug_exit(self, value: int) -> None:
        self.outcome.exit_code = value
        self.request_stop(f"guest wrote {value:#x} to isa-debug-exit")

    def request_stop(self, reason: str) -> None:
        """End the run: called from hooks, so it only records and asks Unicorn to stop."""
        if self.outcome.halted_reason is None:
            self.outcome.halted_reason = reason
        self.stop_requested = reason
        self.cpu.stop()

    # -- memory virtualization ------------------------------------------------------------
    def shadow_paging(self, cr0: int, cr3: int, cr4: int, spaces: int, tables: int) -> None:
        """Translate every guest access through cached shadow page tables of the guest's tables,
        against these virtual control registers, in the C TLB fill (native/tlbfill.py
        ``use_shadow``; the monitor keeps them current with ``tlb.set_registers``). A store to a
        write-protected frame then reaches the alias window: a page table is written there in C,
        a frame the monitor protected (``protect_frames``) by ``_alias_write``. At most ``spaces``
        address spaces are cached, with ``tables`` shadow page tables among them."""
        self.tlb.use_shadow(self.memory, self.cpu.hflags_address, cr0, cr3, cr4, SHADOW_ALIAS, self._alias_write,
                            spaces, tables)

    def _alias_write(self, offset: int, size: int, value: int) -> None:
        self.memory.write(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        # Code translated from these bytes is stale (a guest's code may share a page with its
        # GDT). Unicorn drops translations by linear address, which is this one only while
        # the guest's paging is off (README, known limits).
        if not self.tlb.guest_paging:
            self.cpu.uc.ctl_remove_cache(offset, offset + size)
        if self.on_write_protected is not None:
            self.on_write_protected(offset, size)

    # -- write protection -----------------------------------------------------------
    def protect_frames(self, pfns, on: bool) -> None:
        """Write-protect (or release) guest frames: the CPU's writes to them reach
        ``on_write_protected(address, size)`` after they land, with the instruction's every
        other effect intact (Unicorn runs it whole and leaves the store to the hook).
        ``address`` is guest-physical; under shadow paging the store goes through the alias
        window, otherwise through a write-protect hook (linear = physical there)."""
        machine = self.memory.machine
        shadow = self.tlb.mode == MODE_SHADOW
        for pfn in pfns:
            mfn = self.memory.p2m[pfn]
            machine.set_write_protected(mfn, on)
            if shadow:
                self.tlb.protect(pfn, on)
                continue
            self.cpu.uc.mem_protect(pfn << 12, 0x1000, UC_PROT_READ | UC_PROT_EXEC if on else UC_PROT_ALL)
            if on:
                self._install_write_hook(pfn << 12, 0x1000)

    def map_monitor(self, base: int, size: int) -> memoryview:
        """Map ``size`` bytes of monitor memory at ``base``, outside guest RAM: the CPU may
        read and execute it (descriptor tables, a stub), no guest write lands in it — a
        write there is dropped, as the bare machine drops writes to unassigned addresses.
        The monitor writes it through the returned view."""
        buffer = mmap.mmap(-1, size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        # Mapped writable, then protected: Unicorn 2.1.4 performs a hooked store anyway when
        # the protection was given to mem_map_ptr, and drops it when given by mem_protect.
        self.cpu.uc.mem_map_ptr(base, size, UC_PROT_ALL, address)
        self.cpu.uc.mem_protect(base, size, UC_PROT_READ | UC_PROT_EXEC)
        self._monitor_regions.append((base, size, buffer))
        self._install_write_hook(base, size)
        return memoryview(buffer)

    def _install_write_hook(self, base: int, size: int) -> None:
        # One hook per protected range, never one over all memory: Unicorn keeps every page a
        # memory hook covers on its slow store path (even a page that is not protected).
        # Kept when a frame is released: a store there then only runs slowly.
        if (base, size) not in self._write_hooks:
            self._write_hooks[(base, size)] = self.cpu.uc.hook_add(
                UC_HOOK_MEM_WRITE_PROT, self._hook_write_protected, None, base, base + size - 1)

    def _hook_write_protected(self, uc, access, address, size, value, _) -> bool:
        # Returning True tells Unicorn the store is handled: the instruction completes with
        # every other effect (flags, ESP, a rep count), and the bytes are what we write here.
        if not self.memory.contains(address, size):
            if any(base <= address < base + length for base, length, _ in self._monitor_regions):
                if self.on_monitor_write is not None:
                    self.on_monitor_write(address, size)
                return True
            return False
        self.memory.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        self.store_landed(address, size, protected=True)
        return True

    def store_landed(self, address: int, size: int, protected: bool) -> None:
        """A store written into RAM around the CPU (the write-protect hook's, a device's DMA).
        It went around QEMU's own self-modifying-code check: code translated from these bytes
        is stale now (a guest's code may share a page with its GDT). Blocks translated later
        see the new bytes; the rest of a block running now does not (see README's known
        limits). A ``protected`` frame's monitor hears of it."""
        self.cpu.uc.ctl_remove_cache(address, address + size)
        if protected and self.on_write_protected is not None:
            self.on_write_protected(address, size)

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
        firmware.install(self.memory.write, self.memory.size)   # the tables first, as SeaBIOS leaves them
        for seg in kernel.segments:
            self.memory.write(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)))
        self.memory.write(MULTIBOOT_INFO_ADDR, multiboot_info(self.memory.size, MULTIBOOT_INFO_ADDR, cmdline))
        self.memory.write(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))
        self.bios_handoff()
        cpu = self.cpu
        cpu.set_table_register(GDTR, BOOT_GDT_ADDR, len(BOOT_GDT) * 8 - 1)
        # TR as a CPU leaves reset: a present 32-bit TSS at 0, limit 0xFFFF (QEMU's x86_cpu_reset,
        # which caches it busy; cached busy, Unicorn aborts the process on a stack switch, so
        # available). A guest that never runs ltr and takes a call gate inward reads its stack
        # from low memory and gets the #TS the bare machine gives, not a dead VMM.
        cpu.set_segment_register(TR, 0, 0, 0xFFFF, unicorn_flags(decode_descriptor(
            encode_segment(0, 0xFFFF, 0x89, 0x0))))
        cpu.write(CR0, 0x11)                     # PE | ET, paging off
        cpu.write(CS, BOOT_CS)
        for seg_reg in (SS, DS, ES, FS, GS):
            cpu.write(seg_reg, BOOT_DS)
        cpu.write(EAX, BOOT_MAGIC)
        cpu.write(EBX, MULTIBOOT_INFO_ADDR)
        cpu.write(EFLAGS, 0x2)                   # IF = 0
        cpu.write(ESP, 0x7000)
        cpu.write(EIP, kernel.entry)
