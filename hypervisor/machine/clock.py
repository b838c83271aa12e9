"""The machine's sense of time: a virtual clock that only moves when the VMM moves it.

A real PC's timers count oscillator ticks whether or not anyone is looking, so two
runs of the same kernel see interrupts land on different instructions. hvsim wants
the opposite: the same image, technique and options must give the same output and
trace. So time here is *virtual*: a plain integer of nanoseconds that the run loop
advances (by instructions retired, or straight to the next timer event when the
guest halts). Nothing in this module, or anywhere in machine/, reads wall time.

Devices that count (the PIT) keep the clock they were given and derive their state
from ``now`` with integer arithmetic, so a counter read is exact and repeatable.
"""
from dataclasses import dataclass

NS_PER_SECOND = 1_000_000_000


@dataclass
class VirtualClock:
    """Virtual time in nanoseconds since the machine was switched on.

    Time never runs backwards: an interrupt controller or timer that saw ``now``
    once may rely on never seeing an earlier value.
    """

    now: int = 0

    def advance_to(self, t: int) -> None:
        """Move to time ``t``; asking for the past is a VMM bug, not a guest's."""
        if t < self.now:
            raise ValueError(f"virtual time cannot go backwards ({t} < {self.now})")
        self.now = t

    def advance(self, ns: int) -> None:
        """Let ``ns`` nanoseconds pass."""
        if ns < 0:
            raise ValueError(f"virtual time cannot go backwards (advance by {ns})")
        self.now += ns
