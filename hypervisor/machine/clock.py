"""The machine's sense of time: a virtual clock that only moves with the guest, and its timer queue.

A real PC's timers count oscillator ticks whether or not anyone is looking, so two
runs of the same kernel see interrupts land on different instructions. hvsim wants
the opposite: the same image, technique and options must give the same output and
trace. So time here is *virtual*: nanoseconds that advance with the instructions the
guest retires (one per nanosecond), or jump straight to the next timer event when the
guest halts. Nothing in this module, or anywhere in machine/, reads wall time.

Two things the hardware gives for free have to be built here:

* **Time inside a slice.** The CPU runs the guest in slices of many instructions. A
  device the guest reads in the middle of a slice (a PIT counter, say) must see the
  time of *that* instruction, not of the slice's start, or a "poll until the counter
  changes" loop never ends. While a slice runs, the clock asks the CPU how many
  instructions have retired so far (``live``).
* **A timer queue.** Each device that raises interrupts on a schedule arms one timer
  with its next deadline. Re-arming happens whenever the device is reprogrammed — even
  mid-slice, from an ``out`` — and the clock then tells its listener (the run loop), so
  a slice planned against the old deadline is cut short at the new one.
"""
from __future__ import annotations

from typing import Callable, Hashable

NS_PER_SECOND = 1_000_000_000


class VirtualClock:
    """Virtual time in nanoseconds since the machine was switched on, and armed timers.

    Time never runs backwards: an interrupt controller or timer that saw ``now``
    once may rely on never seeing an earlier value.
    """

    def __init__(self, now: int = 0):
        self._base = now
        self._live: Callable[[], int] | None = None
        self._timers: dict[Hashable, int] = {}
        self.on_rearm: Callable[[int], None] | None = None

    # -- time ------------------------------------------------------------------------
    @property
    def now(self) -> int:
        if self._live is None:
            return self._base
        return self._base + self._live()

    def run_slice(self, live: Callable[[], int] | None) -> None:
        """While a slice runs, ``live()`` gives the nanoseconds it has run so far."""
        self._live = live

    def advance_to(self, t: int) -> None:
        """Move to time ``t``; asking for the past is a VMM bug, not a guest's."""
        if t < self._base:
            raise ValueError(f"virtual time cannot go backwards ({t} < {self._base})")
        self._base = t

    def advance(self, ns: int) -> None:
        """Let ``ns`` nanoseconds pass (the slice that ran them is over)."""
        if ns < 0:
            raise ValueError(f"virtual time cannot go backwards (advance by {ns})")
        self._base += ns

    # -- the timer queue ---------------------------------------------------------------
    def arm(self, owner: Hashable, deadline: int | None) -> None:
        """Set ``owner``'s next event to ``deadline`` (None: it has none)."""
        if deadline is None:
            self._timers.pop(owner, None)
            return
        self._timers[owner] = deadline
        if self.on_rearm is not None:
            self.on_rearm(deadline)

    def deadline(self, owner: Hashable) -> int | None:
        return self._timers.get(owner)

    def due(self) -> list[Hashable]:
        """The owners whose deadline has come, earliest first."""
        timers, now = self._timers, self.now
        if not timers or min(timers.values()) > now:
            return []
        return [owner for owner, t in sorted(timers.items(), key=lambda item: item[1]) if t <= now]

    def next_deadline(self) -> int | None:
        """The earliest armed event, or None when no timer is armed."""
        return min(self._timers.values()) if self._timers else None
