"""QEMU's pc-testdev: the 0xe0 latch (and its byte window at 0xe8), the flush-page port,
the ISA IRQ lines at 0x2000, and the 64 KiB iomem window, each answering as QEMU 7.2's
memory core makes it answer (values measured with a probe under -device pc-testdev)."""
from hypothesis import given, strategies as st

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices import PortBus, standard_pc_devices
from hypervisor.machine.devices.testdev import IOMEM_BASE, IOMEM_SIZE, PcTestDev


def make():
    bus, lines = PortBus(), []
    dev = PcTestDev(lambda line, level: lines.append((line, level)))
    for ports in (dev.latch_ports, dev.flush_ports, dev.latch_byte_ports, dev.irq_ports):
        bus.register(dev, ports, width=4, whole=True)
    return bus, dev, lines


def test_the_latch_keeps_a_dword_and_aligned_accesses_address_its_bytes():
    bus, _, _ = make()
    bus.write(0xE0, 4, 0x11223344)
    assert bus.read(0xE0, 4) == 0x11223344
    assert bus.read(0xE1, 1) == 0x33
    assert bus.read(0xE2, 2) == 0x1122
    bus.write(0xE3, 1, 0x55)
    assert bus.read(0xE0, 4) == 0x55223344
    bus.write(0xE2, 2, 0xBEEF)
    assert bus.read(0xE0, 4) == 0xBEEF3344


def test_misaligned_latch_accesses_are_refused():
    bus, dev, _ = make()
    bus.write(0xE0, 4, 0x11223344)
    assert bus.read(0xE1, 2) == 0                 # measured on QEMU: inw 0xe1 = 0
    bus.write(0xE1, 2, 0x6677)                    # dropped
    assert dev.latch == 0x11223344
    # Runs past 0xe3: QEMU gives the whole access to the latch, which refuses it.
    assert bus.read(0xE2, 4) == 0 and bus.read(0xE3, 2) == 0
    bus.write(0xE3, 2, 0x8899)
    assert dev.latch == 0x11223344


def test_rep_outsb_then_inb_returns_the_last_byte_written():
    bus, _, _ = make()                            # kvm-unit-tests' emulator test, in miniature
    for byte in b"0123456789abcdef":
        bus.write(0xE0, 1, byte)
    assert bus.read(0xE0, 1) == ord("f")


def test_the_byte_window_at_0xe8_is_the_same_latch():
    bus, _, _ = make()
    bus.write(0xE0, 4, 0x55223344)
    assert bus.read(0xE8, 4) == 0x55223344
    assert bus.read(0xEA, 2) == 0x5522
    assert bus.read(0xE9, 2) == 0
    bus.write(0xE8, 1, 0x99)
    assert bus.read(0xE0, 4) == 0x55223399


def test_flush_page_takes_a_dword_and_reads_zero():
    bus, dev, _ = make()
    bus.write(0xE4, 4, 0x00100000)
    assert dev.flushes == 1
    bus.write(0xE4, 2, 0x1000)                    # QEMU accepts only 4-byte accesses here
    bus.write(0xE5, 1, 0x10)
    assert dev.flushes == 1
    assert bus.read(0xE4, 4) == 0 and bus.read(0xE6, 1) == 0


def test_irq_ports_raise_and_lower_isa_lines_with_byte_writes():
    bus, _, lines = make()
    bus.write(0x2003, 1, 1)
    bus.write(0x2003, 1, 0)
    bus.write(0x200F, 1, 0x80)                    # any non-zero byte raises
    assert lines == [(3, 1), (3, 0), (15, 1)]
    assert bus.read(0x2000, 1) == 0


def test_irq_ports_refuse_wider_writes_and_lines_beyond_the_isa_bus():
    bus, _, lines = make()
    bus.write(0x2005, 2, 1)
    bus.write(0x2004, 4, 1)
    bus.write(0x2010, 1, 1)                       # QEMU aborts on an assertion; hvsim ignores it
    bus.write(0x2017, 1, 1)
    assert lines == []
    assert bus.read(0x2004, 4) == 0


def test_iomem_is_plain_storage_zero_at_first():
    _, dev, _ = make()
    assert IOMEM_BASE == 0xFF000000 and IOMEM_SIZE == 0x10000
    assert dev.read_mem(0x100, 4) == 0
    dev.write_mem(0, 4, 0x11223344)
    assert dev.read_mem(0, 4) == 0x11223344
    assert dev.read_mem(1, 1) == 0x33
    assert dev.read_mem(2, 2) == 0x1122
    dev.write_mem(8, 8, 0x0102030405060708)
    assert dev.read_mem(8, 4) == 0x05060708 and dev.read_mem(12, 4) == 0x01020304
    dev.write_mem(0xFFFC, 4, 0xCAFEF00D)
    assert dev.read_mem(0xFFFC, 4) == 0xCAFEF00D
    dev.write_mem(0x10, 1, 0x1FF)                 # only the access's bytes are stored
    assert dev.read_mem(0x10, 2) == 0xFF


def test_iomem_refuses_what_qemus_memory_core_refuses():
    _, dev, _ = make()
    dev.write_mem(0, 4, 0x11223344)
    assert dev.read_mem(1, 4) == 0                # the CPU splits these before they get here
    dev.write_mem(5, 4, 0xAABBCCDD)
    assert dev.read_mem(4, 4) == 0
    assert dev.read_mem(0xFFFE, 4) == 0
    dev.write_mem(0xFFFF, 2, 0xFFFF)
    assert dev.read_mem(0xFFFC, 4) == 0
    for size in (0, 3, 16):                       # not a bus access size: refused, never a crash
        dev.write_mem(0, size, 0xFFFFFFFF)
        assert dev.read_mem(0, size) == 0
    assert dev.read_mem(0, 4) == 0x11223344


def test_the_standard_pc_wires_testdev_lines_to_the_pic():
    bus = PortBus()
    devices = standard_pc_devices(bus, VirtualClock(), lambda byte: None, lambda code: None)
    bus.write(0x2003, 1, 1)
    bus.write(0x20, 1, 0x0A)                      # OCW3: read the IRR
    assert bus.read(0x20, 1) & 0x08
    assert devices.testdev.latch == 0
    bus.write(0xE0, 4, 0xDEADBEEF)
    assert devices.testdev.latch == 0xDEADBEEF


def test_the_standard_pc_sends_testdev_lines_where_it_is_told():
    lines = []
    bus = PortBus()
    standard_pc_devices(bus, VirtualClock(), lambda byte: None, lambda code: None,
                        isa_irq=lambda line, level: lines.append((line, level)))
    lines.clear()                                 # COM1 and the PIT drive their lines too
    bus.write(0x2009, 1, 1)
    assert lines == [(9, 1)]


@given(st.lists(st.tuples(st.sampled_from((0xDF, 0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE7, 0xE8, 0xEB, 0x2000,
                                           0x200F, 0x2010, 0x2017)),
                          st.sampled_from((1, 2, 4)), st.booleans(), st.integers(0, 0xFFFFFFFF)), max_size=30))
def test_no_port_access_makes_testdev_raise_or_drive_a_line_past_15(accesses):
    bus, _, lines = make()
    for port, size, is_write, value in accesses:
        if is_write:
            bus.write(port, size, value)
        else:
            assert 0 <= bus.read(port, size) < 1 << (8 * size)
    assert all(0 <= line < 16 and level in (0, 1) for line, level in lines)
