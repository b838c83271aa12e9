"""The ACPI and MP tables hvsim's firmware leaves in memory: where SeaBIOS puts them under
QEMU 7.2, found the way kernels find them, parsed back field by field, and (except for the
RSDT and DSDT, which differ on purpose) byte for byte what QEMU's memory holds."""
import struct

import pytest

from hypervisor.image.multiboot import E820_RESERVED, memory_map
from hypervisor.machine import firmware
from hypervisor.machine.firmware import FirmwareLayout, install

MIB = 1 << 20

# Dumped from qemu-system-i386 7.2 (SeaBIOS 1.16.2) at -m 64 with `pmemsave`, after the
# multiboot kernel started.
QEMU_64M = {
    0xF59D0: "5253442050545220ba424f43485320007d1afe03",
    0x3FE0000: "46414353400000000000000000000000000000000000000000000000000000000000000000000000"
               "000000000000000000000000000000000000000000000000",
    0x3FE1931: "464143507400000001f9424f4348532042585043202020200100000042585043010000000000fe03"
               "4000fe0301000900b2000000f1f00000000600000000000004060000000000000000000008060000"
               "e0af0000000000000402000404000000ff0fff0f000000000000000032000000a5800000",
    0x3FE19A5: "4150494378000000018a424f4348532042585043202020200100000042585043010000000000e0fe"
               "010000000008000001000000010c00000000c0fe00000000020a0000020000000000020a00050500"
               "00000d00020a0009090000000d00020a000a0a0000000d00020a000b0b0000000d000406ff000001",
    0x3FE1A55: "57414554280000000139424f43485320425850432020202001000000425850430100000002000000",
    0xF5BA0: "5f4d505fb05b0f000104860000000000",
    0xF5BB0: "50434d50c800041d424f434853435055302e3120202020202020202000000000000012000000e0fe"
             "000000000000140363060000fdab8107000000000000000001005043492020200101495341202020"
             "020011010000c0fe03000100000400090300000001000002030000000101000103000000010300"
             "03030000000104000403000000010600060300000001070007030000000108000803000000010c00"
             "0c03000000010d000d03000000010e000e03000000010f000f0403000001000000040100000100ff01",
}


class Memory:
    """Just enough guest RAM for the tables: what install() wrote, readable by address."""

    def __init__(self, ram_bytes):
        self.ram_bytes = ram_bytes
        self.bytes: dict[int, int] = {}

    def write(self, address, data):
        assert 0 <= address and address + len(data) <= self.ram_bytes
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def read(self, address, length):
        return bytes(self.bytes.get(address + i, 0) for i in range(length))


def installed(ram_bytes=64 * MIB):
    memory = Memory(ram_bytes)
    layout = install(memory.write, ram_bytes)
    return memory, layout


def find_rsdp(memory):
    """Linux's and kvm-unit-tests' scan: 16-byte steps over 0xE0000-0xFFFFF, valid checksum."""
    for address in range(0xE0000, 0x100000, 16):
        if memory.read(address, 8) == b"RSD PTR " and sum(memory.read(address, 20)) % 256 == 0:
            return address
    return None


def table(memory, address):
    signature, length = struct.unpack("<4sI", memory.read(address, 8))
    data = memory.read(address, length)
    assert sum(data) % 256 == 0, f"{signature} checksum"
    return signature, data


def rsdt_tables(memory):
    rsdp = find_rsdp(memory)
    rsdt = struct.unpack("<I", memory.read(rsdp + 16, 4))[0]
    signature, data = table(memory, rsdt)
    assert signature == b"RSDT"
    addresses = struct.unpack(f"<{(len(data) - 36) // 4}I", data[36:])
    return {table(memory, a)[0]: a for a in addresses}


@pytest.mark.parametrize("address", sorted(QEMU_64M), ids=hex)
def test_structures_are_byte_for_byte_qemus(address):
    memory, _ = installed()
    expected = bytes.fromhex(QEMU_64M[address])
    assert memory.read(address, len(expected)) == expected


@pytest.mark.parametrize("mib, rsdt", [(64, 0x3FE1A7D), (256, 0xFFE1A7D)])
def test_the_rsdp_is_found_where_qemu_has_it_and_points_at_qemus_rsdt(mib, rsdt):
    memory, layout = installed(mib * MIB)
    assert find_rsdp(memory) == 0xF59D0 == layout.rsdp
    revision, rsdt_address = struct.unpack("<BI", memory.read(0xF59D0 + 15, 5))
    assert revision == 0                           # ACPI 1.0: no XSDT
    assert rsdt_address == rsdt == layout.rsdt


def test_the_rsdt_lists_fadt_madt_and_waet_at_qemus_addresses_but_no_hpet():
    memory, layout = installed()
    assert rsdt_tables(memory) == {b"FACP": 0x3FE1931, b"APIC": 0x3FE19A5, b"WAET": 0x3FE1A55}
    assert (layout.fadt, layout.madt, layout.waet) == (0x3FE1931, 0x3FE19A5, 0x3FE1A55)


def test_the_fadt_points_at_facs_dsdt_and_the_pm_timer():
    memory, layout = installed()
    _, fadt = table(memory, layout.fadt)
    assert len(fadt) == 116 and fadt[8] == 1
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert (facs, dsdt) == (layout.facs, layout.dsdt) == (0x3FE0000, 0x3FE0040)
    assert memory.read(facs, 8) == b"FACS" + struct.pack("<I", 64)
    signature, dsdt_bytes = table(memory, dsdt)
    assert signature == b"DSDT" and len(dsdt_bytes) == 36
    sci, smi = struct.unpack_from("<HI", fadt, 46)
    assert (sci, smi) == (9, 0xB2)
    pm1a_evt, _, pm1a_cnt, _, _, pm_tmr, gpe0, _ = struct.unpack_from("<8I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr, gpe0) == (0x600, 0x604, 0x608, 0xAFE0)
    assert fadt[91] == 4                           # PM_TMR_LEN
    assert struct.unpack_from("<I", fadt, 112)[0] & (1 << 8) == 0   # TMR_VAL_EXT: 24 bits


def madt_entries(memory, layout):
    _, madt = table(memory, layout.madt)
    lapic, flags = struct.unpack_from("<II", madt, 36)
    entries, offset = [], 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        entries.append((kind, madt[offset + 2:offset + length]))
        offset += length
    assert offset == len(madt)
    return lapic, flags, entries


def test_the_madt_has_one_cpu_one_io_apic_and_qemus_overrides():
    memory, layout = installed()
    lapic, flags, entries = madt_entries(memory, layout)
    assert lapic == 0xFEE00000 and flags == 1      # PCAT_COMPAT: there are 8259s too
    cpus = [struct.unpack("<BBI", body) for kind, body in entries if kind == 0]
    assert cpus == [(0, 0, 1)]
    ioapics = [struct.unpack("<BBII", body) for kind, body in entries if kind == 1]
    assert ioapics == [(0, 0, 0xFEC00000, 0)]
    overrides = [struct.unpack("<BBIH", body) for kind, body in entries if kind == 2]
    assert overrides == [(0, 0, 2, 0x0), (0, 5, 5, 0xD), (0, 9, 9, 0xD), (0, 10, 10, 0xD), (0, 11, 11, 0xD)]
    nmis = [struct.unpack("<BHB", body) for kind, body in entries if kind == 4]
    assert nmis == [(0xFF, 0, 1)]


def find_mp(memory):
    """xv6's mpsearch with the BIOS data area as SeaBIOS leaves it."""
    ebda = struct.unpack("<H", memory.read(0x40E, 2))[0] << 4
    for start, length in ((ebda, 1024), (0xF0000, 0x10000)):
        for address in range(start, start + length, 16):
            if memory.read(address, 4) == b"_MP_" and sum(memory.read(address, 16)) % 256 == 0:
                return address
    return None


def test_the_bios_data_area_says_where_the_ebda_is_and_how_much_base_memory():
    memory, _ = installed()
    assert struct.unpack("<H", memory.read(0x40E, 2))[0] == 0x9FC0
    assert struct.unpack("<H", memory.read(0x413, 2))[0] == 639
    assert memory.read(0x9FC00, 1) == b"\x01"


def test_the_mp_floating_pointer_is_found_in_the_f_segment_and_points_at_the_config_table():
    memory, layout = installed()
    assert find_mp(memory) == 0xF5BA0 == layout.mp_floating
    config, length, revision = struct.unpack("<IBB", memory.read(0xF5BA0 + 4, 6))
    assert (config, length, revision) == (0xF5BB0, 1, 4) and config == layout.mp_config


def test_the_mp_config_table_lists_the_cpu_buses_io_apic_and_isa_routing():
    memory, layout = installed()
    header = memory.read(layout.mp_config, 44)
    signature, length, _, _, oem, product, _, _, count, lapic = struct.unpack("<4sHBB8s12sIHHI", header[:40])
    assert (signature, oem, product, lapic) == (b"PCMP", b"BOCHSCPU", b"0.1         ", 0xFEE00000)
    body = memory.read(layout.mp_config, length)
    assert sum(body) % 256 == 0
    entries, offset = [], 44
    for _ in range(count):
        size = 20 if body[offset] == 0 else 8
        entries.append(body[offset:offset + size])
        offset += size
    assert offset == length
    cpu = struct.unpack("<BBBBII8x", entries[0])
    assert cpu == (0, 0, 0x14, 3, 0x663, 0x0781ABFD)       # enabled, bootstrap processor
    assert [e[2:8] for e in entries if e[0] == 1] == [b"PCI   ", b"ISA   "]
    assert [struct.unpack("<BBBBI", e) for e in entries if e[0] == 2] == [(2, 0, 0x11, 1, 0xFEC00000)]
    isa = [struct.unpack("<BBHBBBB", e)[4:] for e in entries if e[0] == 3 and e[4] == 1]
    assert [(irq, pin) for irq, _, pin in isa] == [
        (0, 2), (1, 1), (3, 3), (4, 4), (6, 6), (7, 7), (8, 8), (12, 12), (13, 13), (14, 14), (15, 15)]
    local = [struct.unpack("<BBHBBBB", e)[1:] for e in entries if e[0] == 4]
    assert local == [(3, 0, 1, 0, 0, 0), (1, 0, 1, 0, 0xFF, 1)]   # ExtINT to LINT0, NMI to LINT1


@pytest.mark.parametrize("mib", [4, 64, 256, 3072])
def test_every_table_lies_where_the_memory_map_says_reserved(mib):
    ram = mib * MIB
    _, blobs = firmware.firmware_blobs(ram)
    reserved = [(base, base + length) for base, length, kind in memory_map(ram) if kind == E820_RESERVED]
    bda = {firmware.BDA_EBDA_SEGMENT, firmware.BDA_BASE_MEMORY_KIB}   # the BDA is RAM on QEMU too
    for address, data in blobs.items():
        if address in bda:
            continue
        assert any(lo <= address and address + len(data) <= hi for lo, hi in reserved), hex(address)


def test_tables_do_not_overlap():
    _, blobs = firmware.firmware_blobs(64 * MIB)
    spans = sorted((address, address + len(data)) for address, data in blobs.items())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_install_writes_everything_through_the_callback_and_returns_the_layout():
    writes = []
    layout = install(lambda address, data: writes.append((address, bytes(data))), 64 * MIB)
    assert layout == FirmwareLayout.for_ram(64 * MIB)
    assert {address for address, _ in writes} >= {layout.rsdp, layout.rsdt, layout.mp_floating}


def test_too_little_ram_for_the_tables_is_refused():
    with pytest.raises(ValueError):
        install(lambda address, data: None, 1 * MIB)
