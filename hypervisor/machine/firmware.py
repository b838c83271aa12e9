"""The tables a PC's firmware leaves in memory: ACPI and the MP specification's, where SeaBIOS puts them.

A kernel cannot probe for most of a PC: it cannot ask "is there an interrupt controller at
0xFEC00000?" without risking a machine check. So the firmware writes down what it built,
in tables at places a kernel knows how to search, and the kernel reads them:

* **ACPI.** A *root pointer* (RSDP, "RSD PTR ") on a 16-byte boundary in the BIOS area
  0xE0000-0xFFFFF points at the *root table* (RSDT), a list of addresses of the other
  tables: the **FADT** ("FACP": where the power-management registers are — the PM timer
  at 0x608 — and which interrupt the SCI uses), which points on to the **FACS** (firmware
  waking vector, global lock) and the **DSDT** (AML bytecode describing the devices); the
  **MADT** ("APIC": the local APIC's address, each processor, each I/O APIC, and how ISA
  IRQs map onto I/O APIC inputs — IRQ0 arrives at GSI 2, IRQs 5, 9, 10, 11 are PCI
  interrupts, level-triggered active-high); and **WAET**, which tells Windows the PM timer
  needs no workarounds. Every table starts with the same 36-byte header and sums to zero
  mod 256.
* **MP tables** (Intel's MultiProcessor Specification 1.4, the pre-ACPI way; xv6 reads
  them): a 16-byte *floating pointer* ("_MP_") found by scanning the EBDA, the top KiB of
  base memory, then 0xF0000-0xFFFFF, pointing at a *configuration table* ("PCMP") that
  lists processors, buses, I/O APICs and interrupt routing.

Under QEMU 7.2 the ACPI tables are QEMU's (hw/i386/acpi-build.c), handed to SeaBIOS 1.16
through fw_cfg, which allocates the RSDP in its F-segment and the rest in the 128 KiB it
reserves at the top of RAM (SeaBIOS src/fw/romfile_loader.c); the MP tables are SeaBIOS's
own (src/fw/mptable.c), also in the F-segment. hvsim has no firmware, so ``install``
writes the same tables to the same places at kernel-load time. hvsim's RAM covers
0xA0000-0xFFFFF, so they live in ordinary RAM there; the multiboot memory map already
reports 0xF0000-0xFFFFF and the top 128 KiB reserved, as QEMU's does (image/multiboot.py).

Measured on qemu-system-i386 7.2 + SeaBIOS 1.16.2 at -m 64 and -m 256 (memory dumps, and
the probe guests guests/acpi.S and guests/mptable.S, whose output QEMU recorded):

* RSDP at 0xF59D0 (revision 0, OEM "BOCHS ", no XSDT); MP floating pointer at 0xF5BA0
  with its configuration table right after, at 0xF5BB0. Neither moves with -m or with
  ``-device pc-testdev``.
* FACS at top-0x20000, DSDT at top-0x1FFC0, FADT top-0x1E6CF, MADT top-0x1E65B,
  HPET top-0x1E5E3, WAET top-0x1E5AB, RSDT top-0x1E583 (top = end of RAM).
* RSDP, FADT, FACS, MADT, WAET and the whole MP structure built here are byte for byte
  QEMU's (tests/machine/test_firmware.py holds QEMU's bytes).

Where this departs from QEMU, and why:

* No **HPET** table: hvsim has no HPET, and a table would send a kernel to 0xFED00000.
  The RSDT therefore lists FACP, APIC, WAET (QEMU: FACP, APIC, HPET, WAET); every other
  table stays at QEMU's address.
* The **DSDT** is an empty definition block (a valid header, no AML). QEMU's is 6385
  bytes of AML describing PCI, the ISA devices, CPU hotplug and the sleep states, most of
  it hardware hvsim lacks.
* The FADT describes QEMU's PIIX4 exactly (PM1a event block 0x600, control 0x604, GPE0
  0xAFE0, SMI command port 0xB2, SCI on IRQ 9), but of those registers hvsim decodes only
  the PM timer: enabling ACPI mode or entering a sleep state does nothing.
* The MP table keeps SeaBIOS's description of QEMU's PCI bus 0 and its one PCI interrupt
  (slot 1, pin A: the PIIX4 power-management function, to IRQ 9); hvsim has no PCI.
* No SMBIOS entry point ("_SM_", right after the RSDP on QEMU).

The BIOS data area gets the two fields the table searches read: the EBDA segment (0x40E)
and the base memory size in KiB (0x413), with the EBDA's own size byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from ..image.multiboot import EBDA_BYTES, LOW_RAM_END, TOP_RESERVED
from .devices.pmtimer import PM1A_CNT_BLK, PM1A_EVT_BLK, PM_TMR_BLK, PM_TMR_LEN

LOCAL_APIC_ADDR = 0xFEE00000
IO_APIC_ADDR = 0xFEC00000
IO_APIC_ID = 0

# Where SeaBIOS 1.16.2 under QEMU 7.2 leaves the structures a kernel searches for.
RSDP_ADDR = 0xF59D0
MP_FLOATING_ADDR = 0xF5BA0
# Offsets of QEMU's ACPI tables inside the high zone SeaBIOS reserves (RAM end - 128 KiB).
FACS_OFFSET = 0x0000
DSDT_OFFSET = 0x0040
FADT_OFFSET = 0x1931
MADT_OFFSET = 0x19A5
WAET_OFFSET = 0x1A55
RSDT_OFFSET = 0x1A7D

# What every QEMU-built table says in its header.
OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "
OEM_REVISION = 1
CREATOR_ID = b"BXPC"
CREATOR_REVISION = 1
HEADER = struct.Struct("<4sIBB6s8sI4sI")

# The FADT's fixed description of QEMU's PIIX4 power management (acpi-build.c, piix4).
SCI_IRQ = 9
SMI_CMD_PORT = 0xB2
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
GPE0_BLK, GPE0_BLK_LEN = 0xAFE0, 4
PM1_EVT_LEN, PM1_CNT_LEN = 4, 2
C_STATE_LATENCY_NONE = 0xFFF    # P_LVL2_LAT/P_LVL3_LAT above 100/1000 us: no C2/C3
RTC_CENTURY_INDEX = 0x32
FADT_FLAGS = 0x80A5             # WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | USE_PLATFORM_CLOCK

# The MADT's interrupt source overrides: (ISA IRQ, GSI, MPS INTI flags). QEMU's MADT routes
# IRQ0 to GSI 2 and marks the PCI IRQs (ACPI_BUILD_PCI_IRQS) level-triggered active-high.
MADT_PCAT_COMPAT = 1
INTI_ACTIVE_HIGH_LEVEL = 0x0D   # polarity 01 (high) | trigger 11 (level) << 2
PCI_IRQS = (5, 9, 10, 11)
IRQ_OVERRIDES = ((0, 2, 0),) + tuple((irq, irq, INTI_ACTIVE_HIGH_LEVEL) for irq in PCI_IRQS)
WAET_PM_TIMER_GOOD = 2

# SeaBIOS's MP table: what it read from QEMU's CPU (CPUID.1 of qemu32, the local APIC's
# version register) and the constants it writes itself.
MP_SPEC_REV = 4                 # version 1.4
MP_OEM_ID = b"BOCHSCPU"
MP_PRODUCT_ID = b"0.1         "
CPU_SIGNATURE = 0x663           # family 6, model 6, stepping 3
CPU_FEATURES = 0x0781ABFD
LOCAL_APIC_VERSION = 0x14
MP_IO_APIC_VERSION = 0x11
PIIX4_PM_DEVICE, PIIX4_PM_PIN = 1, 0   # PCI slot 1, INTA#: the SCI
MP_INT, MP_EXTINT, MP_NMI = 0, 3, 1

BDA_EBDA_SEGMENT = 0x40E
BDA_BASE_MEMORY_KIB = 0x413
EBDA_ADDR = LOW_RAM_END


@dataclass(frozen=True)
class FirmwareLayout:
    """Where ``install`` put each structure (guest-physical addresses)."""

    rsdp: int
    rsdt: int
    fadt: int
    facs: int
    dsdt: int
    madt: int
    waet: int
    mp_floating: int
    mp_config: int

    @classmethod
    def for_ram(cls, ram_bytes: int) -> FirmwareLayout:
        if ram_bytes < 2 << 20:
            raise ValueError(f"the firmware tables need at least 2 MiB of RAM, not {ram_bytes:#x} bytes")
        zone = ram_bytes - TOP_RESERVED
        return cls(rsdp=RSDP_ADDR, rsdt=zone + RSDT_OFFSET, fadt=zone + FADT_OFFSET,
                   facs=zone + FACS_OFFSET, dsdt=zone + DSDT_OFFSET, madt=zone + MADT_OFFSET,
                   waet=zone + WAET_OFFSET, mp_floating=MP_FLOATING_ADDR,
                   mp_config=MP_FLOATING_ADDR + 16)


def checksum_byte(data: bytes) -> int:
    """The byte that makes ``data`` (with that byte counted as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _with_checksum(data: bytes, at: int, length: int | None = None) -> bytes:
    covered = data[:length] if length is not None else data
    return data[:at] + bytes([checksum_byte(covered)]) + data[at + 1:]


# -- ACPI --------------------------------------------------------------------------------
def sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    """An ACPI table: the common header, ``body``, and the checksum over both."""
    header = HEADER.pack(signature, HEADER.size + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                         OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    return _with_checksum(header + body, 9)


def rsdp(rsdt_addr: int) -> bytes:
    """ACPI 1.0's 20-byte root pointer (revision 0: no XSDT, as SeaBIOS gives QEMU's)."""
    return _with_checksum(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt_addr), 8)


def rsdt(tables: list[int]) -> bytes:
    return sdt(b"RSDT", struct.pack(f"<{len(tables)}I", *tables))


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """The ACPI 1.0 FADT (revision 1, 116 bytes) QEMU 7.2 builds for the PIIX4 pc."""
    body = struct.pack(
        "<IIBBHIBBBB8I8B4H2B3BHBI",
        facs_addr, dsdt_addr,
        1, 0,                                   # INT_MODEL (1.0: dual PIC/APIC), profile
        SCI_IRQ, SMI_CMD_PORT, ACPI_ENABLE, ACPI_DISABLE, 0, 0,
        PM1A_EVT_BLK, 0, PM1A_CNT_BLK, 0, 0, PM_TMR_BLK, GPE0_BLK, 0,
        PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, GPE0_BLK_LEN, 0, 0, 0,
        C_STATE_LATENCY_NONE, C_STATE_LATENCY_NONE, 0, 0,
        0, 0,                                   # duty cycle
        0, 0, RTC_CENTURY_INDEX,                # RTC day/month alarm, century
        0, 0,                                   # IAPC_BOOT_ARCH, reserved
        FADT_FLAGS)
    return sdt(b"FACP", body)


def facs() -> bytes:
    """The 64-byte FACS: signature and length, everything else zero (no checksum)."""
    return struct.pack("<4sI", b"FACS", 64).ljust(64, b"\0")


def dsdt() -> bytes:
    """An empty definition block: a valid DSDT with no AML in it."""
    return sdt(b"DSDT", b"")


def madt() -> bytes:
    """QEMU's MADT for one CPU: its local APIC, the I/O APIC, the ISA overrides, LINT1 NMI."""
    entries = [
        struct.pack("<BBBBI", 0, 8, 0, 0, 1),                       # processor 0, APIC 0, enabled
        struct.pack("<BBBBII", 1, 12, IO_APIC_ID, 0, IO_APIC_ADDR, 0),
        *(struct.pack("<BBBBIH", 2, 10, 0, irq, gsi, flags) for irq, gsi, flags in IRQ_OVERRIDES),
        struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1),                    # NMI on LINT1 of every CPU
    ]
    return sdt(b"APIC", struct.pack("<II", LOCAL_APIC_ADDR, MADT_PCAT_COMPAT) + b"".join(entries))


def waet() -> bytes:
    return sdt(b"WAET", struct.pack("<I", WAET_PM_TIMER_GOOD))


# -- MP ------------------------------------------------------------------------------------
def mp_entries() -> list[bytes]:
    """The configuration table's entries, in SeaBIOS's order."""
    isa_bus = 1
    entries = [
        struct.pack("<BBBBII8x", 0, 0, LOCAL_APIC_VERSION, 0x3, CPU_SIGNATURE, CPU_FEATURES),  # EN|BP
        struct.pack("<BB6s", 1, 0, b"PCI   "),
        struct.pack("<BB6s", 1, isa_bus, b"ISA   "),
        struct.pack("<BBBBI", 2, IO_APIC_ID, MP_IO_APIC_VERSION, 1, IO_APIC_ADDR),
        struct.pack("<BBHBBBB", 3, MP_INT, 1, 0, PIIX4_PM_DEVICE << 2 | PIIX4_PM_PIN, IO_APIC_ID, SCI_IRQ),
    ]
    for irq in range(16):
        # IRQ2 is the PIC cascade: IRQ0's override already claims I/O APIC input 2.
        if irq in PCI_IRQS or irq == 2:
            continue
        entries.append(struct.pack("<BBHBBBB", 3, MP_INT, 0, isa_bus, irq, IO_APIC_ID, 2 if irq == 0 else irq))
    entries.append(struct.pack("<BBHBBBB", 4, MP_EXTINT, 0, isa_bus, 0, 0, 0))      # PIC to LINT0 of CPU 0
    entries.append(struct.pack("<BBHBBBB", 4, MP_NMI, 0, isa_bus, 0, 0xFF, 1))      # NMI to every LINT1
    return entries


def mp_config() -> bytes:
    entries = mp_entries()
    body = b"".join(entries)
    header = struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), MP_SPEC_REV, 0, MP_OEM_ID,
                         MP_PRODUCT_ID, 0, 0, len(entries), LOCAL_APIC_ADDR, 0, 0, 0)
    return _with_checksum(header + body, 7)


def mp_floating(config_addr: int) -> bytes:
    return _with_checksum(struct.pack("<4sIBBB5x", b"_MP_", config_addr, 1, MP_SPEC_REV, 0), 10)


# -- putting it in memory ----------------------------------------------------------------
def firmware_blobs(ram_bytes: int) -> tuple[FirmwareLayout, dict[int, bytes]]:
    """Every structure the firmware leaves behind, as {guest-physical address: bytes}."""
    at = FirmwareLayout.for_ram(ram_bytes)
    blobs = {
        at.facs: facs(),
        at.dsdt: dsdt(),
        at.fadt: fadt(at.facs, at.dsdt),
        at.madt: madt(),
        at.waet: waet(),
        at.rsdt: rsdt([at.fadt, at.madt, at.waet]),
        at.rsdp: rsdp(at.rsdt),
        at.mp_floating: mp_floating(at.mp_config),
        at.mp_config: mp_config(),
        BDA_EBDA_SEGMENT: struct.pack("<H", EBDA_ADDR >> 4),
        BDA_BASE_MEMORY_KIB: struct.pack("<H", LOW_RAM_END // 1024),
        EBDA_ADDR: bytes([EBDA_BYTES // 1024]),
    }
    return at, blobs


def install(memory_write: Callable[[int, bytes], None], ram_bytes: int) -> FirmwareLayout:
    """Write the firmware's tables into a PC with ``ram_bytes`` of RAM, through
    ``memory_write(paddr, data)``; returns where each one went."""
    layout, blobs = firmware_blobs(ram_bytes)
    for address, data in blobs.items():
        memory_write(address, data)
    return layout
