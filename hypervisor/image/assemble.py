"""From guest source to a bootable kernel: the first step of every run.

A guest in guests/ is a page of Intel-syntax assembly. Before any technique can run it, it has to
become what a real boot loader accepts: a Multiboot v1 kernel. We build the simplest such kernel,
a flat binary loaded at 1 MiB whose Multiboot header uses the "a.out kludge" (flag bit 16): the
header itself tells the loader where the bytes go and where to jump, so no ELF headers are needed
and QEMU's `-kernel` boots exactly the same file this project runs.

The builder writes the header itself, as `.long` directives in front of the guest's source, so the
guest never has to. Keystone resolves forward references in `.long`, which is what makes the
entry address (`_start`) and the end of the image exact without a second pass.

Keystone 0.9.2 also has a radix bug: its lexer's default radix is read from a field nobody
initialises, so a bare `48` means 48 or 0x48 depending on what the heap held (after any Ks that
set an option has been freed, it is usually 0x48); and setting *any* option forces radix 16.
So we set an option on every assembler (radix exactly 16, always) and write every decimal
literal of the source in hex before keystone sees it: `48` means 48, every time.

Keystone reports an error with no line number, so on failure we find the line ourselves: for a
missing symbol we ask keystone which name it could not resolve; for anything else we look for the
shortest prefix of the source that fails the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks, KsError

from hypervisor.errors import AssemblyError

LOAD_ADDR = 0x100000  # 1 MiB: where every Multiboot kernel traditionally lives
MULTIBOOT_HEADER_MAGIC = 0x1BADB002
# bit 1: "give me the memory map"; bit 16: the header's address fields are valid (a.out kludge).
MULTIBOOT_HEADER_FLAGS = (1 << 1) | (1 << 16)
ENTRY_LABEL = "_start"

_INCLUDE = re.compile(r'^\s*\.include\s+"([^"]+)"\s*(#.*)?$')
# A source line's pieces: string and character literals (kept), a comment (kept), other code.
_PIECES = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|#.*|[^"\'#]+|.')
_DECIMAL = re.compile(r"(?<![\w.$])\d+(?![\w.$])")


def _decimal_as_hex(token: re.Match) -> str:
    digits = token.group(0)
    if len(digits) > 1 and digits[0] == "0":          # LLVM reads a leading 0 as octal
        try:
            return hex(int(digits, 8))
        except ValueError:
            return digits                             # not octal: keystone reports it
    return hex(int(digits))


def hex_literals(text: str) -> str:
    """The same line with every decimal number written in hex, outside strings and comments."""
    return "".join(piece if piece[0] in "\"'#" else _DECIMAL.sub(_decimal_as_hex, piece)
                   for piece in _PIECES.findall(text))


@dataclass(frozen=True)
class SourceLine:
    """One line of the expanded source and where it came from, for error messages."""

    text: str
    file: str
    line: int


def expand_includes(path: Path, _stack: tuple[Path, ...] = ()) -> list[SourceLine]:
    """Read a guest and splice in every `.include "x.S"` (relative to the including file)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        raise AssemblyError(f"{path}: .include cycle through {path.name}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise AssemblyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out: list[SourceLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match is None:
            out.append(SourceLine(line, str(path), number))
            continue
        included = path.parent / match.group(1)
        if not included.exists():
            raise AssemblyError(f"{path}:{number}: .include file not found: {match.group(1)}")
        out.extend(expand_includes(included, _stack + (resolved,)))
    return out


def _prologue(path: str) -> list[SourceLine]:
    """The Multiboot header, written as the first bytes of the image."""
    checksum = (-(MULTIBOOT_HEADER_MAGIC + MULTIBOOT_HEADER_FLAGS)) & 0xFFFFFFFF
    lines = [
        "_multiboot_header:",
        f".long {MULTIBOOT_HEADER_MAGIC:#x}",
        f".long {MULTIBOOT_HEADER_FLAGS:#x}",
        f".long {checksum:#x}",
        ".long _multiboot_header",  # header_addr: the header sits at load_addr
        f".long {LOAD_ADDR:#x}",  # load_addr
        ".long _multiboot_load_end",  # load_end_addr: end of the file's bytes
        ".long _multiboot_load_end",  # bss_end_addr: guests keep no bss of their own
        f".long {ENTRY_LABEL}",  # entry_addr
    ]
    return [SourceLine(text, path, 0) for text in lines]


def _epilogue(path: str) -> list[SourceLine]:
    return [SourceLine(".balign 4, 0", path, 0), SourceLine("_multiboot_load_end:", path, 0)]


def _assemble(lines: list[SourceLine], resolver=None) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    ks.syntax = KS_OPT_SYNTAX_INTEL       # the default syntax; setting it pins the radix to 16
    if resolver is not None:
        ks.sym_resolver = resolver
    encoding, _ = ks.asm("\n".join(hex_literals(line.text) for line in lines), LOAD_ADDR)
    return bytes(encoding or b"")


def _fails_like(lines: list[SourceLine], errno: int) -> bool:
    """Does this prefix fail with the same error, counting forward references as resolved?"""

    def anything(_name, value):
        value[0] = 0
        return True

    try:
        _assemble(lines, anything)
    except KsError as exc:
        return exc.errno == errno
    return False


def _locate(lines: list[SourceLine], exc: KsError) -> str:
    """Name the file:line that keystone's error came from (it does not say)."""
    missing: list[str] = []

    def record(name, _value):
        missing.append(name.decode() if isinstance(name, bytes) else str(name))
        return False

    try:
        _assemble(lines, record)
    except KsError:
        pass
    if missing:
        word = re.compile(r"(?<![\w.$])" + re.escape(missing[0]) + r"(?![\w$])")
        for line in lines:
            if word.search(line.text.split("#", 1)[0]):
                return f"{line.file}:{line.line}: undefined symbol {missing[0]}"
        return f"{lines[0].file}: undefined symbol {missing[0]}"
    # Binary search for the shortest failing prefix: its last line is the culprit.
    lo, hi = 1, len(lines)
    if not _fails_like(lines, exc.errno):
        return f"{lines[-1].file}: {_message(exc)}"
    while lo < hi:
        mid = (lo + hi) // 2
        if _fails_like(lines[:mid], exc.errno):
            hi = mid
        else:
            lo = mid + 1
    culprit = lines[lo - 1]
    return f"{culprit.file}:{culprit.line}: {_message(exc)}: {culprit.text.strip()}"


def _message(exc: KsError) -> str:
    return str(exc).split(" (KS_ERR", 1)[0]


def assemble_file(path) -> bytes:
    """Assemble a guest (with its includes) behind a generated Multiboot header, at 1 MiB."""
    body = expand_includes(Path(path))
    if not any(re.match(rf"^\s*{ENTRY_LABEL}\s*:", line.text) for line in body):
        raise AssemblyError(f"{path}: no {ENTRY_LABEL} label: the kernel has no entry point")
    lines = _prologue(str(path)) + body + _epilogue(str(path))
    try:
        return _assemble(lines)
    except KsError as exc:
        raise AssemblyError(_locate(lines, exc)) from None


def build_image(path) -> bytes:
    """The bootable flat Multiboot image for a guest source file (what `hv build` writes)."""
    return assemble_file(path)
