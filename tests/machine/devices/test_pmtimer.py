"""The ACPI PM timer at 0x608: 24 bits at 3.579545 MHz of virtual time, read as QEMU 7.2's
memory core lets it be read (any aligned size gives the low bytes, misaligned reads 0)."""
from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.bus import PortBus
from hypervisor.machine.devices.pmtimer import PM_TMR_BLK, AcpiPmTimer, pm_timer_count


def make(now=0):
    bus, clock = PortBus(), VirtualClock(now)
    timer = AcpiPmTimer(clock)
    bus.register(timer, timer.ports, width=4, whole=True)
    return bus, clock, timer


def test_the_timer_sits_at_0x608_as_in_qemus_piix4_pm_block():
    assert PM_TMR_BLK == 0x608
    _, _, timer = make()
    assert list(timer.ports) == [0x608, 0x609, 0x60A, 0x60B]


def test_count_is_virtual_time_at_3579545_hz_floored():
    assert pm_timer_count(0) == 0
    assert pm_timer_count(279) == 0            # one tick is 279.37 ns
    assert pm_timer_count(280) == 1
    assert pm_timer_count(1_000_000_000) == 3_579_545
    assert pm_timer_count(1_000_000) == 3579      # 3579.545 floored


def test_count_wraps_at_24_bits():
    wrap_ns = -(-(1 << 24) * 1_000_000_000 // 3_579_545)   # the first ns at tick 2^24
    assert pm_timer_count(wrap_ns - 1) == 0xFFFFFF
    assert pm_timer_count(wrap_ns) == 0


def test_a_dword_read_follows_the_clock_even_inside_a_slice():
    bus, clock, _ = make(now=1_000_000_000)
    assert bus.read(0x608, 4) == 3_579_545
    clock.run_slice(lambda: 1_000_000)        # 1 ms of the running slice has passed
    assert bus.read(0x608, 4) == pm_timer_count(1_001_000_000)


def test_any_aligned_read_gives_the_low_bytes_of_the_count_whatever_the_offset():
    bus, _, _ = make(now=1_234_567_890)
    count = pm_timer_count(1_234_567_890)
    assert count > 0xFFFF
    assert bus.read(0x608, 1) == count & 0xFF
    assert bus.read(0x609, 1) == count & 0xFF     # not the second byte: QEMU ignores the offset
    assert bus.read(0x60B, 1) == count & 0xFF
    assert bus.read(0x608, 2) == count & 0xFFFF
    assert bus.read(0x60A, 2) == count & 0xFFFF


def test_misaligned_reads_are_refused_and_read_zero():
    bus, _, _ = make(now=1_234_567_890)
    assert bus.read(0x609, 2) == 0                # measured: inw 0x609 reads 0 on QEMU 7.2
    # Accesses that run past 0x60b: QEMU hands them to the timer whole, and it refuses them
    # (measured: inl 0x60a and inw 0x60b read 0).
    assert bus.read(0x60A, 4) == 0
    assert bus.read(0x60B, 2) == 0
    assert bus.read(0x609, 4) == 0


def test_writes_change_nothing():
    bus, _, _ = make(now=5_000_000)
    before = bus.read(0x608, 4)
    bus.write(0x608, 4, 0)
    bus.write(0x609, 1, 0xFF)
    assert bus.read(0x608, 4) == before
