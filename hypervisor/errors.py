"""Errors a user can cause: each becomes one line on stderr and exit status 2.

A guest that crashes is *not* an error here: a triple fault or a runaway guest is
a result of the run (``halted_reason``), because the machine did its job.
"""


class HvError(Exception):
    """A problem with the user's input; its message is the whole story, on one line."""


class ImageError(HvError):
    """The kernel image cannot be loaded (missing, truncated, not multiboot, ...)."""


class AssemblyError(HvError):
    """A guest source file does not assemble."""


class UnsupportedGuest(HvError):
    """The guest needs something this technique cannot give it (yet)."""
