"""The ways to share one CPU between a guest and a monitor.

Each technique is a ``Monitor`` subclass; they plug in by name here, and everything
that runs guests (the CLI, ``hv compare``, the benchmarks) looks them up in this table.
"""
from .bt.technique import BinaryTranslation
from .hvm import Hvm
from .native import Native
from .trap import TrapAndEmulate

TECHNIQUES = {cls.name: cls for cls in (Native, TrapAndEmulate, Hvm)}
# Techniques being built: run when named (``hv run --technique bt``), left out of what runs every
# technique (``hv compare``, the benchmarks, the fuzzer) until they match the bare machine on every
# guest. docs/architecture.md says what each lacks.
IN_PROGRESS = {cls.name: cls for cls in (BinaryTranslation,)}


def technique_class(name: str):
    """The technique called ``name``, finished or in progress; KeyError if none."""
    return TECHNIQUES.get(name) or IN_PROGRESS[name]
