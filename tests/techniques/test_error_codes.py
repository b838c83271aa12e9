"""Unicorn does not expose error codes: the monitor derives them from the faulting instruction."""
import pytest

from hypervisor.machine.cpu import CR0, EAX, ESP
from hypervisor.machine.memory import MachineMemory
from hypervisor.machine.pc import PC
from hypervisor.techniques.native import Native
from hypervisor.vmm.decode import decode

RAM = 4 << 20
AT = 0x200000


@pytest.fixture
def monitor():
    pc = PC(MachineMemory(RAM), RAM)
    pc.cpu.write(CR0, 0x11)                          # protected mode, paging off
    return Native(pc)


@pytest.mark.parametrize("code, setup, expected", [
    ("8ed8", {EAX: 0x4B}, 0x48),                     # mov ds, eax: the selector, RPL dropped
    ("1f", {ESP: 0x300000}, 0x50),                   # pop ds: the word at [esp]
    ("c518", {EAX: 0x300010}, 0x60),                 # lds ebx, [eax]: the word after the offset
    ("ea000010007000", {}, 0x70),                    # ljmp 0x70:0x100000
    ("ff28", {EAX: 0x300010}, 0x60),                 # ljmp [eax] (m16:32)
    ("fa", {}, 0),                                   # cli: a #GP with error code 0
])
def test_general_protection_error_code_names_the_refused_selector(monitor, code, setup, expected):
    mem = monitor.pc.memory
    mem.write(AT, bytes.fromhex(code))
    mem.write(0x300000, (0x50).to_bytes(2, "little"))
    mem.write(0x300014, (0x60).to_bytes(2, "little"))
    for reg, value in setup.items():
        monitor.cpu.write(reg, value)
    assert decode(bytes.fromhex(code), AT) is not None
    assert monitor.error_code_for(13, AT) == expected


def test_vectors_without_error_code_get_none(monitor):
    monitor.pc.memory.write(AT, b"\xf7\xf1")
    assert monitor.error_code_for(0, AT) is None
