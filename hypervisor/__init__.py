"""hvsim: real x86 guest kernels on a Unicorn CPU under a Python virtual machine monitor.

The package tells the story in the order a course on virtualization does:
machine/ is the bare PC, vmm/ is what every monitor shares, techniques/ are the
ways to share the CPU (native, trap-and-emulate, ...), image/ builds and loads
multiboot kernels.
"""
__version__ = "0.1.0"
