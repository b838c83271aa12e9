"""Port 0x80 swallows writes, remembers the last one, and reads 0xff."""
from hypervisor.machine.devices.bus import PortBus
from hypervisor.machine.devices.postcode import PostCodePort


def test_post_port_remembers_last_byte_and_reads_all_ones():
    bus, post = PortBus(), PostCodePort()
    bus.register(post, post.ports)
    assert post.last is None
    bus.write(0x80, 1, 0x12)
    bus.write(0x80, 1, 0x34)
    assert post.last == 0x34 and post.writes == 2
    assert bus.read(0x80, 1) == 0xFF
    assert bus.read(0x80, 2) == 0xFFFF
