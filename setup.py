"""Build step for the one thing pyproject.toml cannot declare (except experimentally): the C helpers.

hypervisor/machine/native/*.c are plain shared libraries loaded with ctypes, not Python extension
modules; setuptools' Extension is simply the portable way to compile them at install time,
`pip install -e .` included (the library lands beside its source). ``optional=True``: without a C
compiler the install still succeeds, and the package runs a Python fallback with a one-line warning.
"""
import warnings

from setuptools import Extension, setup

# A setup.py makes pip show setuptools' note on editable installs even under -q; it says nothing
# about this project (the same install without setup.py keeps it quiet).
warnings.filterwarnings("ignore", message="Editable installation")

setup(ext_modules=[
    Extension("hypervisor.machine.native._blockhook", ["hypervisor/machine/native/blockhook.c"],
              extra_compile_args=["-O2"], optional=True),
    Extension("hypervisor.machine.native._readguard", ["hypervisor/machine/native/readguard.c"],
              extra_compile_args=["-O2"], optional=True),
    Extension("hypervisor.machine.native._tlbfill", ["hypervisor/machine/native/tlbfill.c"],
              extra_compile_args=["-O2"], optional=True),
])
