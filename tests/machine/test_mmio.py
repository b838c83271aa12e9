"""The MMIO bus: device ranges decoded by physical address, accesses reaching the device as the CPU
made them, the monitor in front, and every instruction form done by the CPU itself."""
from __future__ import annotations

import pytest

from hypervisor.machine.cpu import EAX, EBX, EIP, ESI, EDI, ECX
from hypervisor.machine.mmio import MmioBus, WindowDevice
from tests.machine.native.test_blockhook import BASE, UNTIL_NEVER, ring0_cpu

DEVICE = 0xFED00000


class Recorder:
    """A 4-byte-wide device that remembers every access and reads back offset-derived values."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.stored: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return self.stored.get(offset, 0x11223344 + offset) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))
        self.stored[offset] = value


def run(code: bytes, **regs) -> tuple:
    cpu = ring0_cpu(code + b"\xf4")
    device = Recorder()
    bus = MmioBus(cpu)
    bus.register(device, DEVICE, 0x1000)
    for name, value in regs.items():
        cpu.write({"eax": EAX, "ebx": EBX, "esi": ESI, "edi": EDI, "ecx": ECX}[name], value)
    cpu.run(BASE, UNTIL_NEVER, 1000)
    return cpu, device


def test_a_load_reaches_the_device_with_its_offset_and_size():
    cpu, device = run(b"\xa1" + DEVICE.to_bytes(4, "little"))          # mov eax, [DEVICE]
    assert device.log == [("r", 0, 4)] and cpu.read(EAX) == 0x11223344


def test_a_read_modify_write_is_one_load_and_one_store():
    # add dword ptr [DEVICE + 0x10], 5
    cpu, device = run(b"\x83\x05" + (DEVICE + 0x10).to_bytes(4, "little") + b"\x05")
    assert device.log == [("r", 0x10, 4), ("w", 0x10, 4, 0x11223354 + 5)]


def test_a_string_copy_from_the_device_reads_each_element():
    # rep movsd from the device into RAM, three dwords
    cpu, device = run(b"\xf3\xa5", esi=DEVICE + 0x20, edi=0x3000, ecx=3)
    assert device.log == [("r", 0x20, 4), ("r", 0x24, 4), ("r", 0x28, 4)]
    assert cpu.uc.mem_read(0x3000, 12) == b"".join((0x11223344 + o).to_bytes(4, "little") for o in (0x20, 0x24, 0x28))


def test_a_byte_load_is_a_byte_access():
    cpu, device = run(b"\x0f\xb6\x05" + (DEVICE + 3).to_bytes(4, "little"))   # movzx eax, byte [DEVICE+3]
    assert device.log == [("r", 3, 1)]


def test_the_monitor_sees_each_access_before_the_device():
    cpu = ring0_cpu(b"\xa3" + DEVICE.to_bytes(4, "little") + b"\xf4")       # mov [DEVICE], eax
    device = Recorder()
    bus = MmioBus(cpu)
    bus.register(device, DEVICE, 0x1000)
    seen = []

    class Monitor:
        def mmio_read(self, address, size):
            seen.append(("r", address, size))
            return bus.mmio_read(address, size)

        def mmio_write(self, address, size, value):
            seen.append(("w", address, size, value))
            bus.mmio_write(address, size, value)

    bus.handler = Monitor()
    cpu.write(EAX, 0xCAFE)
    cpu.run(BASE, UNTIL_NEVER, 100)
    assert seen == [("w", DEVICE, 4, 0xCAFE)] and device.log == [("w", 0, 4, 0xCAFE)]


@pytest.mark.parametrize("policy, expected", [("split", 0x1122334811223344), ("refuse", 0)])
def test_an_access_wider_than_the_device_is_split_or_refused(policy, expected):
    cpu = ring0_cpu(b"\xf4")
    device = Recorder()
    bus = MmioBus(cpu)
    bus.register(device, DEVICE, 0x1000, wider=policy)
    assert bus.mmio_read(DEVICE, 8) == expected
    bus.mmio_write(DEVICE + 8, 8, 0x0102030405060708)
    assert device.stored == ({8: 0x05060708, 12: 0x01020304} if policy == "split" else {})


def test_ranges_are_whole_pages_and_never_overlap():
    cpu = ring0_cpu(b"\xf4")
    bus = MmioBus(cpu)
    bus.register(Recorder(), DEVICE, 0x2000)
    with pytest.raises(ValueError):
        bus.register(Recorder(), DEVICE + 0x1000, 0x1000)
    with pytest.raises(ValueError):
        bus.register(Recorder(), DEVICE + 0x10000, 0x800)


def test_a_window_device_reaches_read_mem_and_write_mem():
    class Window:
        def __init__(self):
            self.calls = []

        def read_mem(self, offset, size):
            self.calls.append(("r", offset, size))
            return 7

        def write_mem(self, offset, size, value):
            self.calls.append(("w", offset, size, value))

    window = Window()
    adapter = WindowDevice(window)
    assert adapter.read(4, 2) == 7
    adapter.write(8, 1, 3)
    assert window.calls == [("r", 4, 2), ("w", 8, 1, 3)]


def test_an_access_at_an_mmio_exit_is_placed_at_its_blocks_start_with_block_counting():
    """Unicorn does not bring EIP up to date for MMIO callbacks (machine/mmio.py): with block
    counting the exit is at the block's start, deterministically."""
    code = b"\x90\x90" + b"\xa1" + DEVICE.to_bytes(4, "little") + b"\xf4"
    cpu = ring0_cpu(code)
    seen = []

    class Monitor:
        def mmio_read(self, address, size):
            seen.append(cpu.read(EIP))
            return 0

        def mmio_write(self, address, size, value):
            pass

    bus = MmioBus(cpu)
    bus.register(Recorder(), DEVICE, 0x1000)
    bus.handler = Monitor()
    cpu.run(BASE, UNTIL_NEVER, 100)
    assert seen == ([BASE] if cpu.counting == "block" else [BASE + 2])
