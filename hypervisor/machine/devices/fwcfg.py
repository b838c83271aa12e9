"""fw_cfg: how QEMU tells the firmware (and any curious kernel) what machine it built.

A real PC's BIOS finds out about its machine by probing chips. An emulated one is told:
QEMU exposes a little key/value store, the *firmware configuration* device, that SeaBIOS
reads at boot for the RAM size, the CPU count, the e820 map, the ACPI tables and the
boot order. It stays there after boot, and kernels written for QEMU read it too:
kvm-unit-tests ask it how many CPUs to wait for (``FW_CFG_NB_CPUS``; a wrong answer
makes them spin for ever), and Linux's qemu_fw_cfg driver lists its files.

The interface, as QEMU 7.2 builds it for the ``pc`` machine (hw/nvram/fw_cfg.c,
hw/i386/fw_cfg.c, ``fw_cfg_init_io_dma(0x510, 0x514, ...)``):

* **Selector and data, 0x510-0x511.** A 16-bit write to 0x510 selects an item by key
  and rewinds it; each byte read from 0x511 (or from 0x510: the two ports are one
  region and any byte read is a data read) returns the item's next byte. Past the end
  of the item, and for a key that holds nothing, reads give 0. Keys with bit 15 set are
  the architecture's own (``FW_CFG_ARCH_LOCAL``); bit 14, the old write channel, is
  ignored; a key beyond the last file slot selects nothing.
* **Items.** Numbered keys hold fixed things (``FW_CFG_SIGNATURE`` "QEMU",
  ``FW_CFG_ID``, ``FW_CFG_RAM_SIZE``...), little-endian. Key 0x19 is the **file
  directory**: a big-endian count, then one 64-byte record per file (big-endian size
  and selector key, a 56-byte name), in 32 slots.
* **DMA, 0x514-0x51b.** Reading it gives the signature "QEMU CFG". Writing a guest-
  physical address there — the high half to 0x514, then the low half to 0x518, each a
  big-endian 32-bit write — makes the device read a 16-byte descriptor at that address
  (big-endian control, length, 64-bit address), then select, read (copy into guest
  memory), skip, or refuse a write, and store the outcome (0, or the error bit) back in
  the descriptor's control word. Because it is implemented, ``FW_CFG_ID`` reads 3
  (traditional interface and DMA), as on QEMU.

Every other access is what QEMU's memory core makes of the region's rules, given that
QEMU hands a port access whole to the device of its first port: a byte write to the data
port is ignored (QEMU removed write support in 2.4), a wider read of 0x510/0x511 is
refused and reads 0 (it does not consume data), a 16-bit write at 0x511 is misaligned and
ignored, and the DMA window accepts only 32-bit writes at its two halves and aligned
reads. All of it was checked against qemu-system-i386 7.2 by probe guests (guests/fwcfg.S,
and guests/portedges.S for the accesses that run past the ports).

What is stored is the part of QEMU's store that describes this machine truthfully:
signature, ID, RAM size, NB_CPUS = MAX_CPUS = 1, ``FW_CFG_IRQ0_OVERRIDE`` = 1, and the
files "etc/boot-fail-wait" and "etc/e820", each under the selector key QEMU gives it
(0x24, 0x25: a kernel that remembers selectors finds them where it did on QEMU). Not
stored, so reading them gives zeros: the UUID, NOGRAPHIC, NUMA and boot-menu items (all zero on
QEMU too); QEMU's multiboot loader items (``FW_CFG_KERNEL_*``, ``FW_CFG_INITRD_*``: the image
and info structure its option ROM copies); and the files that would describe hardware or
firmware hvsim does not have — QEMU's own ACPI build ("etc/acpi/*", "etc/table-loader"),
SMBIOS, "etc/system-states" (sleep states need the PM1 control register), the option
ROMs, "bootorder", and the empty "bios-geometry" and "etc/tpm/log".

DMA departs from QEMU where guest memory ends: a transfer that touches an address
outside RAM fails as a whole (error bit set, nothing copied), where QEMU copies the part
inside RAM and would also reach memory-mapped devices.
"""
from __future__ import annotations

import struct
from typing import Protocol

FW_CFG_PORT = 0x510             # selector (16-bit writes) and data (byte reads at 0x510-0x511)
FW_CFG_DMA_PORT = 0x514         # 8 bytes: the descriptor's address, big-endian
FW_CFG_DMA_SIGNATURE = b"QEMU CFG"

# Keys (include/standard-headers/linux/qemu_fw_cfg.h, include/hw/i386/fw_cfg.h).
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS = 0x20        # QEMU's default for machines since 2.9
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0xFFFF & ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL)
FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL | 0x02

FW_CFG_VERSION = 0x01           # FW_CFG_ID bits: the traditional interface...
FW_CFG_VERSION_DMA = 0x02       # ...and DMA

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10
DMA_DESCRIPTOR = struct.Struct(">IIQ")   # control, length, address

FILE_NAME_BYTES = 56
E820_RAM = 1
# Selector keys of the files QEMU 7.2 lists for `-m N -kernel IMAGE` on the pc machine
# (sorted by name: bios-geometry 0x20, bootorder, etc/acpi/rsdp, etc/acpi/tables, then these).
BOOT_FAIL_WAIT_KEY = 0x24
E820_KEY = 0x25

_ONES = (0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF)
_ZERO_CHUNK = 1 << 16


class DmaMemory(Protocol):
    """Guest-physical memory as fw_cfg sees it (``GuestMemory`` is one): its size, and
    the reads and writes of DMA."""

    size: int

    def contains(self, paddr: int, length: int = 1) -> bool: ...

    def read(self, paddr: int, length: int) -> bytes: ...

    def write(self, paddr: int, data: bytes) -> None: ...


def file_directory(files: list[tuple[str, int, int]]) -> bytes:
    """The FW_CFG_FILE_DIR item for (name, key, size) records: a big-endian count, then
    ``FW_CFG_FILE_SLOTS`` 64-byte slots (size, key, reserved, name), unused ones zero."""
    if len(files) > FW_CFG_FILE_SLOTS:
        raise ValueError(f"fw_cfg has {FW_CFG_FILE_SLOTS} file slots, not {len(files)}")
    records = b"".join(struct.pack(">IHH56s", size, key, 0, name.encode()[:FILE_NAME_BYTES - 1])
                       for name, key, size in sorted(files))
    return struct.pack(">I", len(files)) + records.ljust(64 * FW_CFG_FILE_SLOTS, b"\0")


def e820_file(ram_bytes: int) -> bytes:
    """QEMU's "etc/e820": its own memory map (not the BIOS's), one RAM range from 0;
    each record a little-endian u64 address, u64 length, u32 type."""
    return struct.pack("<QQI", 0, ram_bytes, E820_RAM)


def pc_items(ram_bytes: int, cpus: int = 1) -> dict[int, bytes]:
    """The items QEMU 7.2's pc machine stores that describe this machine truthfully."""
    files = {
        ("etc/boot-fail-wait", BOOT_FAIL_WAIT_KEY): struct.pack("<i", -1),   # no reboot timeout
        ("etc/e820", E820_KEY): e820_file(ram_bytes),
    }
    items = {
        FW_CFG_SIGNATURE: b"QEMU",
        FW_CFG_ID: struct.pack("<I", FW_CFG_VERSION | FW_CFG_VERSION_DMA),
        FW_CFG_RAM_SIZE: struct.pack("<Q", ram_bytes),
        FW_CFG_NB_CPUS: struct.pack("<H", cpus),
        # On x86 this is "the APIC ID limit" (hw/i386/fw_cfg.c): 1 for one CPU with ID 0.
        FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
        FW_CFG_IRQ0_OVERRIDE: struct.pack("<I", 1),
        FW_CFG_FILE_DIR: file_directory([(name, key, len(data)) for (name, key), data in files.items()]),
    }
    items.update({key: data for (_, key), data in files.items()})
    return items


class FwCfg:
    """The fw_cfg device at 0x510 (selector/data) and 0x514 (DMA address).

    ``items`` maps a key (bit 15 for the architecture's own keys) to its bytes;
    ``memory`` is where DMA transfers read descriptors and copy data.
    """

    ports = range(FW_CFG_PORT, FW_CFG_PORT + 2)
    dma_ports = range(FW_CFG_DMA_PORT, FW_CFG_DMA_PORT + 8)

    def __init__(self, items: dict[int, bytes], memory: DmaMemory) -> None:
        self.items = {key & (FW_CFG_ARCH_LOCAL | FW_CFG_ENTRY_MASK): bytes(data) for key, data in items.items()}
        self.memory = memory
        # At kernel entry SeaBIOS and QEMU's multiboot ROM have read what they wanted;
        # a data read before any select gives 0 on QEMU, as it does with nothing selected.
        self.item: bytes | None = None
        self.offset = 0
        self.dma_address = 0

    # -- the traditional interface -----------------------------------------------------
    def select(self, key: int) -> None:
        """Select ``key`` and rewind it (QEMU's fw_cfg_select)."""
        self.offset = 0
        if key & FW_CFG_ENTRY_MASK >= FW_CFG_FILE_FIRST + FW_CFG_FILE_SLOTS:
            self.item = None
        else:
            self.item = self.items.get(key & (FW_CFG_ARCH_LOCAL | FW_CFG_ENTRY_MASK), b"")

    def read_byte(self) -> int:
        """The selected item's next byte, or 0 past its end (the offset then stays put)."""
        item = self.item
        if item is None or self.offset >= len(item):
            return 0
        self.offset += 1
        return item[self.offset - 1]

    def read(self, port: int, size: int) -> int:
        if port in self.dma_ports:
            return self._dma_signature(port - FW_CFG_DMA_PORT, size)
        return self.read_byte() if size == 1 else 0

    def write(self, port: int, size: int, value: int) -> None:
        if port in self.dma_ports:
            self._dma_write(port - FW_CFG_DMA_PORT, size, value)
        elif port == FW_CFG_PORT and size == 2:
            self.select(value & 0xFFFF)
        # A byte written to the data port, a misaligned or 32-bit select: ignored.

    # -- DMA ------------------------------------------------------------------------------
    @staticmethod
    def _dma_signature(offset: int, size: int) -> int:
        if offset % size:
            return 0
        return int.from_bytes(FW_CFG_DMA_SIGNATURE[offset:offset + size], "little")

    def _dma_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset not in (0, 4):
            return
        # The register is big-endian: the guest writes the bytes of a big-endian number.
        half = int.from_bytes((value & _ONES[4]).to_bytes(4, "little"), "big")
        if offset == 0:
            self.dma_address = half << 32
        else:
            address, self.dma_address = self.dma_address | half, 0
            self.dma_transfer(address)

    def dma_transfer(self, descriptor: int) -> None:
        """Carry out the transfer the descriptor at guest-physical ``descriptor`` asks for
        and store its outcome in the descriptor's control word (QEMU's fw_cfg_dma_transfer)."""
        memory = self.memory
        if not memory.contains(descriptor, DMA_DESCRIPTOR.size):
            self._dma_status(descriptor, DMA_CTL_ERROR)
            return
        control, length, address = DMA_DESCRIPTOR.unpack(memory.read(descriptor, DMA_DESCRIPTOR.size))
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        if control & DMA_CTL_READ:
            op = DMA_CTL_READ
        elif control & DMA_CTL_WRITE:
            op = DMA_CTL_WRITE
        elif control & DMA_CTL_SKIP:
            op = DMA_CTL_SKIP
        else:
            op, length = None, 0        # no operation: only the select happens
        status = 0
        while length and not status & DMA_CTL_ERROR:
            item = self.item
            available = 0 if item is None else max(0, len(item) - self.offset)
            if not available:
                # Nothing left to give: a read gets zeros, a write fails, a skip skips.
                count = length
                if op == DMA_CTL_READ and not self._zero(address, count):
                    status |= DMA_CTL_ERROR
                elif op == DMA_CTL_WRITE:
                    status |= DMA_CTL_ERROR
            else:
                count = min(length, available)
                if op == DMA_CTL_READ:
                    if memory.contains(address, count):
                        memory.write(address, item[self.offset:self.offset + count])
                    else:
                        status |= DMA_CTL_ERROR
                elif op == DMA_CTL_WRITE:
                    status |= DMA_CTL_ERROR      # every item is read-only, as in QEMU's pc
                self.offset += count
            address += count
            length -= count
        self._dma_status(descriptor, status)

    def _zero(self, address: int, count: int) -> bool:
        # A hostile length can be 4 GiB: check first, then zero in bounded chunks.
        if not self.memory.contains(address, count):
            return False
        chunk = bytes(min(count, _ZERO_CHUNK))
        while count:
            step = min(count, len(chunk))
            self.memory.write(address, chunk[:step])
            address += step
            count -= step
        return True

    def _dma_status(self, descriptor: int, status: int) -> None:
        if self.memory.contains(descriptor, 4):
            self.memory.write(descriptor, struct.pack(">I", status))
