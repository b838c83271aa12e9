"""Native helpers: the few hot spots that Python cannot afford, as tiny C files.

Each C file here is built by the package's install step (setup.py), loaded with ctypes,
needs neither Unicorn's headers nor linking against it, and has a pure-Python fallback
that announces itself with one line on stderr.
"""
from hypervisor.machine.native.blockhook import BlockHook, InterruptWindowWatch

__all__ = ["BlockHook", "InterruptWindowWatch"]
