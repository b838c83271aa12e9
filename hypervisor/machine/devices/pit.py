"""The 8254 programmable interval timer: the PC's heartbeat, counted in virtual time.

An 8254 has three 16-bit down-counters fed by a 1.193182 MHz clock (a third of the
original PC's 3.579545 MHz colour-burst crystal, divided by 4 — chosen because it was
cheap, and fixed ever since). On a PC, channel 0's output is wired to IRQ0, so a
kernel programs it in mode 2 (rate generator) or mode 3 (square wave) to get its
timer tick; channel 1 once refreshed DRAM; channel 2 feeds the speaker and is gated
by bit 0 of port 0x61, which is also where its output can be read back (bit 5) —
Linux uses that to calibrate the TSC. Ports 0x40-0x42 are the counters and 0x43 the
control word: channel select, how the 16-bit count crosses the 8-bit port (low byte,
high byte, or low then high), the mode, and BCD.

Nothing here ticks. As QEMU does (hw/timer/i8254.c, the reference model), a channel
remembers the virtual time its count was loaded and *computes* the counter and output
at any instant from the number of input ticks elapsed since:

    ticks = (now_ns - load_ns) * 1193182 // 10**9

Integer arithmetic throughout, so a counter read at a given virtual time is exact and
the same in every run. Channel 0 keeps its next IRQ0 edge armed in the clock's timer
queue (re-armed on every reprogramming, so a new rate counts from the moment it is
loaded); the run loop lets virtual time reach the earliest deadline and calls
``update()``.

Where this differs from QEMU 7.2, and why:

* An IRQ0 edge happens at the first nanosecond at which the tick count reaches the
  boundary. QEMU converts ticks back to ns rounding down and then re-checks, so its
  edges land on that same nanosecond in mode 3 and up to one input tick (~838 ns)
  later in mode 2. Guest-visible counter values are identical.
* ``update()`` coalesces: if virtual time jumped over several periods since the last
  call, IRQ0 gets one rising edge, not one per period — as a real PIC would have
  latched only one while the CPU was not listening.
* Modes 6 and 7 are the 8254's aliases of modes 2 and 3 and are counted as such;
  the control word still reads back (status) as written. QEMU mixes mode-2 counting
  with mode-0 output for them.
* BCD counting is remembered (for status read-back) but not performed, as in QEMU.
* The gate only matters on its rising edge, where modes 1, 2, 3 and 5 restart the
  count (as QEMU); a low gate does not stop the counter in modes 0, 2, 3 and 4.
"""
from dataclasses import dataclass
from typing import Callable

from hypervisor.machine.clock import NS_PER_SECOND, VirtualClock

PIT_HZ = 1_193_182
PIT_BASE = 0x40
PIT_CONTROL = 0x43
PORT61 = 0x61
PIT_IRQ = 0

# How a channel's 16-bit value crosses the 8-bit port (control word bits 5:4), and
# the read/write state machines that step through it.
RW_LATCH = 0
RW_LSB = 1
RW_MSB = 2
RW_WORD0 = 3    # low byte next, then high
RW_WORD1 = 4    # high byte next


def ticks_elapsed(load_ns: int, now_ns: int) -> int:
    """Input-clock ticks between ``load_ns`` and ``now_ns`` (floor, as QEMU's muldiv64)."""
    return (now_ns - load_ns) * PIT_HZ // NS_PER_SECOND


def ns_for_ticks(ticks: int) -> int:
    """The first nanosecond offset at which ``ticks_elapsed`` reaches ``ticks``."""
    return -(-ticks * NS_PER_SECOND // PIT_HZ)


def effective_mode(mode: int) -> int:
    """Modes 6 and 7 are the 8254's don't-care encodings of modes 2 and 3."""
    return mode - 4 if mode >= 6 else mode


def counter_value(mode: int, count: int, d: int) -> int:
    """What the counting element holds ``d`` ticks after ``count`` was loaded
    (QEMU's pit_get_count; 0x10000 stands for a count of 0)."""
    mode = effective_mode(mode)
    if mode == 2:
        return count - d % count
    if mode == 3:
        # Square wave: the count drops by two per tick, twice per period.
        return count - (2 * d) % count
    return (count - d) & 0xFFFF     # modes 0, 1, 4, 5 wrap around and keep going


def output(mode: int, count: int, d: int) -> bool:
    """The OUT pin ``d`` ticks after load, as QEMU's pit_get_out draws it (in mode 2
    QEMU pulses OUT *high* for the tick at each period boundary; the real chip pulses
    it low, but IRQ0 sees a rising edge at the same tick either way)."""
    mode = effective_mode(mode)
    if mode == 0:
        return d >= count
    if mode == 1:
        return d < count
    if mode == 2:
        return d != 0 and d % count == 0
    if mode == 3:
        return d % count < (count + 1) >> 1
    return d == count               # modes 4 and 5: one-tick strobe


def next_rising_tick(mode: int, count: int, d: int) -> int | None:
    """The first tick after ``d`` at which OUT rises, or None if it never will."""
    mode = effective_mode(mode)
    if mode in (0, 4, 5):
        return count if d < count else None
    if mode == 1:
        return None
    if count == 1:                  # OUT stuck high: mode 2 from tick 1, mode 3 always
        return 1 if mode == 2 and d < 1 else None
    return (d // count + 1) * count


@dataclass
class PitChannel:
    """One counter's registers and its loaded count."""

    mode: int = 3
    count: int = 0x10000       # the programmed count (0 means 65536)
    load_ns: int = 0           # virtual time the count was loaded
    gate: bool = True
    bcd: bool = False
    rw_mode: int = 0           # access mode from the last control word
    read_state: int = 0
    write_state: int = 0
    write_latch: int = 0       # low byte held while waiting for the high byte
    latched_count: int = 0
    count_latched: int = 0     # 0, or the rw_mode still to be read from the latch
    status: int = 0
    status_latched: bool = False

    def ticks(self, now_ns: int) -> int:
        return ticks_elapsed(self.load_ns, now_ns)

    def counter(self, now_ns: int) -> int:
        return counter_value(self.mode, self.count, self.ticks(now_ns))

    def out(self, now_ns: int) -> bool:
        return output(self.mode, self.count, self.ticks(now_ns))


class Pit8254:
    """Three channels at 0x40-0x43 on ``clock``; channel 0's OUT drives ``irq(level)``."""

    def __init__(self, clock: VirtualClock,
                 irq: Callable[[bool], None] | None = None) -> None:
        self.clock = clock
        self.irq = irq
        self.reset()

    def reset(self) -> None:
        """QEMU's pit_reset_common: every channel in mode 3 counting 65536 from now,
        gates high except the speaker's. Channel 0 is therefore already ticking at
        18.2 Hz before any guest code runs, as on a real PC."""
        now = self.clock.now
        self.channels = [PitChannel(load_ns=now, gate=(i != 2)) for i in range(3)]
        self._irq_level = False
        self._seen_tick = 0        # channel 0 state has been applied up to this tick
        self._next_ns: int | None = None
        self._reload_channel0()

    @property
    def ports(self) -> range:
        return range(PIT_BASE, PIT_CONTROL + 1)

    # -- the run loop's view ----------------------------------------------------

    def next_event_ns(self) -> int | None:
        """Virtual time of channel 0's next rising edge on IRQ0, or None if the
        programmed mode will never give another one (a fired one-shot)."""
        return self._next_ns

    def update(self) -> None:
        """Bring IRQ0 up to ``clock.now``: one rising edge if any was crossed since
        the last look (several missed periods coalesce into one), then the line
        left at OUT's current level."""
        now = self.clock.now
        ch = self.channels[0]
        d = ch.ticks(now)
        if self._next_ns is not None and now >= self._next_ns:
            if self._irq_level:
                self._set_irq(False)
            self._set_irq(True)
        self._set_irq(output(ch.mode, ch.count, d))
        self._seen_tick = d
        self._schedule(ch)

    def _schedule(self, ch: PitChannel) -> None:
        tick = next_rising_tick(ch.mode, ch.count, self._seen_tick)
        self._next_ns = None if tick is None else ch.load_ns + ns_for_ticks(tick)
        self.clock.arm(self, self._next_ns)

    def _reload_channel0(self) -> None:
        """A new count (or gate edge) restarts channel 0: OUT takes its initial level
        at once, as QEMU's pit_irq_timer_update does on load."""
        ch = self.channels[0]
        self._seen_tick = 0
        self._set_irq(output(ch.mode, ch.count, 0))
        self._schedule(ch)

    def _set_irq(self, level: bool) -> None:
        if level != self._irq_level:
            self._irq_level = level
            if self.irq is not None:
                self.irq(level)

    # -- gate (port 0x61 drives channel 2's) --------------------------------------

    def set_gate(self, channel: int, level: bool) -> None:
        ch = self.channels[channel]
        if not ch.gate and level and effective_mode(ch.mode) in (1, 2, 3, 5):
            ch.load_ns = self.clock.now          # rising gate restarts the count
            if channel == 0:
                self._reload_channel0()
        ch.gate = level

    # -- the guest's view -------------------------------------------------------

    def read(self, port: int, size: int) -> int:
        index = port - PIT_BASE
        if index == 3:
            return 0                 # the control word is write-only; QEMU reads 0
        ch = self.channels[index]
        if ch.status_latched:
            ch.status_latched = False
            return ch.status
        if ch.count_latched:
            if ch.count_latched == RW_MSB:
                ch.count_latched = 0
                return (ch.latched_count >> 8) & 0xFF
            if ch.count_latched == RW_WORD0:
                ch.count_latched = RW_MSB
            else:
                ch.count_latched = 0
            return ch.latched_count & 0xFF
        count = ch.counter(self.clock.now)
        state = ch.read_state
        if state == RW_WORD0:
            ch.read_state = RW_WORD1
            return count & 0xFF
        if state == RW_WORD1:
            ch.read_state = RW_WORD0
            return (count >> 8) & 0xFF
        if state == RW_MSB:
            return (count >> 8) & 0xFF
        return count & 0xFF

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        index = port - PIT_BASE
        if index == 3:
            self._control(value)
            return
        ch = self.channels[index]
        state = ch.write_state
        if state == RW_WORD0:
            ch.write_latch = value
            ch.write_state = RW_WORD1
        elif state == RW_WORD1:
            ch.write_state = RW_WORD0
            self._load(index, ch.write_latch | (value << 8))
        elif state == RW_MSB:
            self._load(index, value << 8)
        else:
            self._load(index, value)

    def _control(self, value: int) -> None:
        channel = value >> 6
        if channel == 3:
            self._read_back(value)
            return
        ch = self.channels[channel]
        access = (value >> 4) & 3
        if access == RW_LATCH:
            self._latch(ch)
            return
        ch.rw_mode = access
        ch.read_state = access
        ch.write_state = access
        ch.mode = (value >> 1) & 7
        ch.bcd = bool(value & 1)
        # As in QEMU, the new mode takes effect for counting at once but the count
        # (and IRQ0 timing) is only restarted by loading a new count.
        if channel == 0:
            self._schedule(ch)

    def _read_back(self, value: int) -> None:
        """The 8254's read-back command: latch count and/or status of several
        channels at once (bit 5 low = count, bit 4 low = status)."""
        now = self.clock.now
        for index, ch in enumerate(self.channels):
            if not value & (2 << index):
                continue
            if not value & 0x20:
                self._latch(ch)
            if not value & 0x10 and not ch.status_latched:
                ch.status = ((ch.out(now) << 7) | (ch.rw_mode << 4)
                             | (ch.mode << 1) | ch.bcd)
                ch.status_latched = True

    def _latch(self, ch: PitChannel) -> None:
        """Counter latch command: freeze the value for reading; a second latch
        before the first is read is ignored."""
        if not ch.count_latched:
            ch.latched_count = ch.counter(self.clock.now)
            # Before any control word rw_mode is 0 and, as in QEMU, the latch
            # then has nothing to step through: reads stay live.
            ch.count_latched = ch.rw_mode

    def _load(self, index: int, value: int) -> None:
        ch = self.channels[index]
        ch.count = value or 0x10000
        ch.load_ns = self.clock.now
        if index == 0:
            self._reload_channel0()


class Port61:
    """System control port B at 0x61, as QEMU's pcspk models it: bit 0 is channel 2's
    gate, bit 1 the speaker data enable, bit 4 the DRAM refresh toggle (flips on every
    read — BIOS delay loops count it) and bit 5 channel 2's OUT."""

    def __init__(self, pit: Pit8254, port: int = PORT61) -> None:
        self.pit = pit
        self.port = port
        self.speaker_data = False
        self.refresh = 0

    @property
    def ports(self) -> range:
        return range(self.port, self.port + 1)

    def read(self, port: int, size: int) -> int:
        ch = self.pit.channels[2]
        self.refresh ^= 0x10
        return (int(ch.gate) | (self.speaker_data << 1) | self.refresh
                | (ch.out(self.pit.clock.now) << 5))

    def write(self, port: int, size: int, value: int) -> None:
        self.speaker_data = bool(value & 2)
        self.pit.set_gate(2, bool(value & 1))
