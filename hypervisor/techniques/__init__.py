"""The ways to share one CPU between a guest and a monitor.

Each technique is a ``Monitor`` subclass; they plug in by name here, and everything
that runs guests (the CLI, ``hv compare``, the benchmarks) looks them up in this table.
"""
from .hvm import Hvm
from .native import Native
from .trap import TrapAndEmulate

TECHNIQUES = {cls.name: cls for cls in (Native, TrapAndEmulate, Hvm)}
