"""The selector a far transfer or segment load names, read from the instruction and guest memory.

Unicorn gives the monitor the error code of a fault it raised (``Cpu.exception_error_code``);
what it does not say is which selector a far jmp/call *would* have loaded when the monitor must
perform the transfer itself (trap-and-emulate's call gates). ``_loaded_selector`` reads it.
"""
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
    ("8ed8", {EAX: 0x4B}, 0x4B),                     # mov ds, eax
    ("1f", {ESP: 0x300000}, 0x50),                   # pop ds: the word at [esp]
    ("c518", {EAX: 0x300010}, 0x60),                 # lds ebx, [eax]: the word after the offset
    ("ea000010007000", {}, 0x70),                    # ljmp 0x70:0x100000
    ("ff28", {EAX: 0x300010}, 0x60),                 # ljmp [eax] (m16:32)
    ("fa", {}, None),                                # cli loads no selector
])
def test_loaded_selector_is_the_one_the_instruction_names(monitor, code, setup, expected):
    mem = monitor.pc.memory
    mem.write(AT, bytes.fromhex(code))
    mem.write(0x300000, (0x50).to_bytes(2, "little"))
    mem.write(0x300014, (0x60).to_bytes(2, "little"))
    for reg, value in setup.items():
        monitor.cpu.write(reg, value)
    insn = decode(bytes.fromhex(code), AT)
    assert insn is not None
    assert monitor._loaded_selector(insn) == expected


def test_vectors_without_error_code_get_none(monitor):
    assert monitor.error_code_for(0) is None
    assert monitor.error_code_for(6) is None
