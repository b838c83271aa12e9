"""fw_cfg at 0x510/0x511 and its DMA interface at 0x514, as QEMU 7.2's pc machine presents
them to a `-m 64 -kernel` guest (the values were measured with guests/fwcfg.S)."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices import PortBus, standard_pc_devices
from hypervisor.machine.devices.fwcfg import FwCfg, file_directory, pc_items
from hypervisor.machine.memory import GuestMemory, MachineMemory

RAM = 4 << 20
DESC = 0x1000           # where the tests put a DMA descriptor
BUF = 0x2000            # and the DMA target


def make(ram=RAM):
    memory = GuestMemory(MachineMemory(ram), ram)
    bus = PortBus()
    fw = FwCfg(pc_items(ram), memory)
    bus.register(fw, fw.ports, width=4, whole=True)
    bus.register(fw, fw.dma_ports, width=4, whole=True)
    return bus, fw, memory


def select(bus, key):
    bus.write(0x510, 2, key)


def data(bus, n):
    return bytes(bus.read(0x511, 1) for _ in range(n))


def test_signature_id_cpus_and_ram_size():
    bus, _, _ = make(64 << 20)
    select(bus, 0x00)
    assert data(bus, 4) == b"QEMU"
    select(bus, 0x01)
    assert data(bus, 4) == struct.pack("<I", 3)   # traditional interface and DMA
    select(bus, 0x05)
    assert data(bus, 2) == b"\x01\x00"            # kvm-unit-tests wait for this many CPUs
    select(bus, 0x0F)
    assert data(bus, 2) == b"\x01\x00"
    select(bus, 0x03)
    assert data(bus, 8) == struct.pack("<Q", 64 << 20)
    select(bus, 0x8002)                           # FW_CFG_IRQ0_OVERRIDE, an arch key
    assert data(bus, 4) == struct.pack("<I", 1)


def test_reading_past_the_end_gives_zeros_and_a_select_rewinds():
    bus, _, _ = make()
    select(bus, 0x00)
    assert data(bus, 8) == b"QEMU\0\0\0\0"
    select(bus, 0x00)
    assert data(bus, 1) == b"Q"


def test_keys_alias_and_out_of_range_keys_select_nothing():
    bus, _, _ = make()
    select(bus, 0x4005)                           # the write-channel bit is ignored
    assert data(bus, 2) == b"\x01\x00"
    for key in (0x02, 0x07, 0x3F, 0x40, 0x7FFF, 0xFFFF, 0x8005):
        select(bus, key)
        assert data(bus, 4) == bytes(4)


def test_the_selector_port_reads_data_too_and_refuses_wider_reads():
    bus, _, _ = make()
    select(bus, 0x00)
    assert bus.read(0x510, 1) == ord("Q")          # one region: any byte read is a data read
    assert bus.read(0x510, 2) == 0                 # refused, and consumes nothing
    assert bus.read(0x511, 1) == ord("E")


def test_writes_other_than_a_16_bit_select_at_0x510_are_ignored():
    bus, _, _ = make()
    select(bus, 0x00)
    bus.write(0x511, 1, 0x01)                      # QEMU dropped data writes in 2.4
    bus.write(0x510, 1, 0x01)
    bus.write(0x511, 2, 0x01)                      # misaligned select
    bus.write(0x510, 4, 0x01)                      # a 32-bit select is refused
    bus.write(0x511, 4, 0x00190019)
    assert data(bus, 1) == b"Q"


def test_accesses_running_past_the_ports_are_refused_without_consuming_data():
    bus, _, _ = make()
    select(bus, 0x00)
    # QEMU hands `inl 0x510` / `inw 0x511` to fw_cfg whole; it refuses them (measured: 0).
    assert bus.read(0x510, 4) == 0
    assert bus.read(0x511, 2) == 0
    assert bus.read(0x511, 4) == 0
    assert data(bus, 1) == b"Q"


def directory(bus):
    select(bus, 0x19)
    count = struct.unpack(">I", data(bus, 4))[0]
    records = [struct.unpack(">IHH56s", data(bus, 64)) for _ in range(32)]
    assert data(bus, 4) == bytes(4)                # 4 + 32 * 64 bytes, then the end
    return count, records


def test_the_file_directory_is_well_formed_and_keeps_qemus_selectors():
    bus, _, _ = make()
    count, records = directory(bus)
    assert count == 2
    files = [(name.rstrip(b"\0"), key, size) for size, key, _, name in records[:count]]
    assert files == [(b"etc/boot-fail-wait", 0x24, 4), (b"etc/e820", 0x25, 20)]
    assert all(record == (0, 0, 0, bytes(56)) for record in records[count:])


def test_files_hold_what_qemu_gives():
    bus, _, _ = make(64 << 20)
    select(bus, 0x25)
    assert data(bus, 20) == struct.pack("<QQI", 0, 64 << 20, 1)
    select(bus, 0x24)
    assert data(bus, 4) == b"\xff\xff\xff\xff"


def test_a_directory_has_32_slots_at_most():
    assert len(file_directory([])) == 4 + 32 * 64
    with pytest.raises(ValueError):
        file_directory([(f"f{i}", 0x20 + i, 0) for i in range(33)])


def test_dma_window_reads_back_its_signature():
    bus, _, _ = make()
    assert bus.read(0x514, 4) == int.from_bytes(b"QEMU", "little")
    assert bus.read(0x518, 4) == int.from_bytes(b" CFG", "little")
    assert bus.read(0x51B, 1) == ord("G")
    assert bus.read(0x516, 2) == int.from_bytes(b"MU", "little")
    assert bus.read(0x515, 2) == 0                 # misaligned


def test_dma_signature_reads_running_past_the_window_are_misaligned_and_read_zero():
    bus, _, _ = make()
    assert bus.read(0x51A, 4) == 0 and bus.read(0x51B, 2) == 0


def dma(bus, memory, control, length, target=BUF, descriptor=DESC, fill=b"\xff" * 16):
    """Run one transfer; the control word stored back, and the target's bytes after it."""
    memory.write(target, fill)
    memory.write(descriptor, struct.pack(">IIQ", control, length, target))
    bus.write(0x514, 4, 0)                         # high half (big-endian 0)
    bus.write(0x518, 4, int.from_bytes(descriptor.to_bytes(4, "big"), "little"))
    return struct.unpack(">I", memory.read(descriptor, 4))[0], memory.read(target, len(fill))


def test_dma_select_and_read():
    bus, _, memory = make()
    status, buf = dma(bus, memory, 0x0005_000A, 2)
    assert status == 0 and buf[:3] == b"\x01\x00\xff"


def test_dma_read_past_the_end_zero_fills():
    bus, _, memory = make()
    status, buf = dma(bus, memory, 0x0000_000A, 8)
    assert status == 0 and buf[:9] == b"QEMU\0\0\0\0\xff"


def test_dma_skip_moves_the_offset():
    bus, _, memory = make()
    status, buf = dma(bus, memory, 0x0000_000C, 2)
    assert status == 0 and buf == b"\xff" * 16
    status, buf = dma(bus, memory, 0x0000_0002, 2)
    assert status == 0 and buf[:3] == b"MU\xff"


def test_dma_write_is_refused_but_still_moves_the_offset():
    bus, _, memory = make()
    status, _ = dma(bus, memory, 0x0001_0018, 4)
    assert status == 1                             # DMA_CTL_ERROR
    assert data(bus, 1) == b"\0"                   # measured: the ID then reads 0
    select(bus, 0x01)
    assert data(bus, 1) == b"\x03"


def test_dma_select_alone_moves_nothing():
    bus, _, memory = make()
    status, buf = dma(bus, memory, 0x0005_0008, 4)
    assert status == 0 and buf == b"\xff" * 16
    assert data(bus, 1) == b"\x01"


def test_dma_outside_ram_sets_the_error_bit_and_writes_nothing():
    bus, fw, memory = make()
    status, _ = dma(bus, memory, 0x0000_000A, 4, target=RAM - 2, fill=b"\xff\xff")
    assert status == 1
    assert memory.read(RAM - 2, 2) == b"\xff\xff"
    status, _ = dma(bus, memory, 0x0000_000A, 0xFFFFFFFF)   # 4 GiB of zeros: refused at once
    assert status == 1


def test_dma_descriptor_outside_ram_is_harmless():
    bus, fw, memory = make()
    fw.dma_transfer(RAM + 0x1000)                  # nothing to read, nowhere to report
    memory.write(RAM - 4, b"\0\0\0\0")
    fw.dma_transfer(RAM - 4)                        # only the control word is in RAM
    assert memory.read(RAM - 4, 4) == struct.pack(">I", 1)
    bus.write(0x514, 4, 0x01000000)                # high half 1: a descriptor above 4 GiB
    bus.write(0x518, 4, 0)


def test_dma_address_register_needs_32_bit_writes_and_resets_after_a_transfer():
    bus, fw, memory = make()
    bus.write(0x514, 4, 0x01000000)
    assert fw.dma_address == 1 << 32
    bus.write(0x514, 2, 0)
    bus.write(0x515, 1, 0)
    assert fw.dma_address == 1 << 32
    memory.write(DESC, struct.pack(">IIQ", 0x0005_000A, 2, BUF))
    low = int.from_bytes(DESC.to_bytes(4, "big"), "little")
    bus.write(0x518, 4, low)                       # the descriptor at 4 GiB + DESC: not RAM
    assert fw.dma_address == 0
    assert memory.read(DESC, 4) == struct.pack(">I", 0x0005_000A)
    bus.write(0x518, 4, low)                       # the high half was reset: DESC itself
    assert memory.read(DESC, 4) == bytes(4)


def test_the_standard_pc_has_fw_cfg_when_given_its_memory():
    bus = PortBus()
    memory = GuestMemory(MachineMemory(RAM), RAM)
    devices = standard_pc_devices(bus, VirtualClock(), lambda b: None, lambda c: None, memory=memory)
    select(bus, 0x03)
    assert data(bus, 8) == struct.pack("<Q", RAM)
    assert devices.fwcfg is not None
    bare = PortBus()
    assert standard_pc_devices(bare, VirtualClock(), lambda b: None, lambda c: None).fwcfg is None
    assert bare.read(0x511, 1) == 0xFF


ACCESS = st.tuples(st.integers(0x50C, 0x520), st.sampled_from((1, 2, 4)), st.booleans(),
                   st.integers(0, 0xFFFFFFFF))


@settings(max_examples=60, deadline=None)
@given(st.lists(ACCESS, max_size=40), st.binary(min_size=16, max_size=16))
def test_no_access_sequence_makes_fw_cfg_raise(accesses, descriptor):
    bus, _, memory = make(1 << 20)
    memory.write(DESC, descriptor)                 # a hostile descriptor, if one is used
    for port, size, is_write, value in accesses:
        if is_write:
            bus.write(port, size, value)
        else:
            assert 0 <= bus.read(port, size) < 1 << (8 * size)
