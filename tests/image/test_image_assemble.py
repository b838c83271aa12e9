"""The builder turns guest source into a Multiboot image with an exact entry point, and says
which line is wrong when keystone refuses."""
import struct

import pytest

from hypervisor.errors import AssemblyError
from hypervisor.image import build_image, parse_kernel


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_header_fields_describe_the_image_and_entry_is_start(tmp_path):
    src = write(tmp_path, "g.S", "nop\nnop\n_start:\n mov eax, 1\n hlt\n")
    image = build_image(src)
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from("<8I", image)
    assert (magic, flags) == (0x1BADB002, 0x00010002)
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert (header, load) == (0x100000, 0x100000)
    assert load_end == bss_end == 0x100000 + len(image)
    assert entry == 0x100000 + 32 + 2
    assert image[entry - 0x100000:entry - 0x100000 + 5] == b"\xb8\x01\x00\x00\x00"
    assert parse_kernel(image, 64 << 20).entry == entry


def test_include_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib", "inner.S", "helper:\n ret\n")
    src = write(tmp_path, "g.S", '_start:\n call helper\n.include "lib/inner.S"\n')
    assert build_image(src)[32:32 + 6] == b"\xe8\x00\x00\x00\x00\xc3"


def test_missing_start_is_an_error(tmp_path):
    with pytest.raises(AssemblyError, match="_start"):
        build_image(write(tmp_path, "g.S", "main:\n ret\n"))


def test_bad_mnemonic_names_the_file_and_line(tmp_path):
    src = write(tmp_path, "g.S", "_start:\n nop\n frobnicate eax\n nop\n")
    with pytest.raises(AssemblyError, match=r"g\.S:3: .*frobnicate") as info:
        build_image(src)
    assert "\n" not in str(info.value)


def test_undefined_symbol_names_the_line_that_uses_it(tmp_path):
    src = write(tmp_path, "g.S", "_start:\n nop\n jmp nowhere\n")
    with pytest.raises(AssemblyError, match=r"g\.S:3: undefined symbol nowhere"):
        build_image(src)


def test_error_inside_an_included_file_names_that_file(tmp_path):
    write(tmp_path, "inc.S", "ok:\n ret\n bogus eax\n")
    src = write(tmp_path, "g.S", '_start:\n nop\n.include "inc.S"\n')
    with pytest.raises(AssemblyError, match=r"inc\.S:3"):
        build_image(src)


def test_missing_include_and_missing_file_are_errors(tmp_path):
    with pytest.raises(AssemblyError, match="not found"):
        build_image(write(tmp_path, "g.S", '_start:\n.include "nope.S"\n'))
    with pytest.raises(AssemblyError, match="cannot read"):
        build_image(tmp_path / "absent.S")


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.S", '.include "b.S"\n')
    write(tmp_path, "b.S", '.include "a.S"\n')
    with pytest.raises(AssemblyError, match="cycle"):
        build_image(write(tmp_path, "g.S", '_start:\n.include "a.S"\n'))


def test_decimal_literals_stay_decimal_after_keystone_has_been_given_options(tmp_path):
    # keystone 0.9.2 never initialises its default radix; a freed Ks that had an option set
    # leaves 16 behind, and a later `mov al, 48` used to assemble as mov al, 0x48.
    from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
    for _ in range(3):
        ks = Ks(KS_ARCH_X86, KS_MODE_32)
        ks.syntax = KS_OPT_SYNTAX_INTEL
        ks.asm("nop", 0)
        del ks
        image = build_image(write(tmp_path, "d.S", "_start:\n mov al, 48\n mov al, 0x30\n add al, 10\n"))
        assert image[32:38] == bytes.fromhex("b030b030040a")


def test_hex_literals_rewrites_numbers_but_not_strings_comments_or_names():
    from hypervisor.image.assemble import hex_literals
    assert hex_literals("mov al, 48  # '0' and 12") == "mov al, 0x30  # '0' and 12"
    assert hex_literals('.asciz "r2 d2 100"') == '.asciz "r2 d2 100"'
    assert hex_literals("add dword ptr [esp + 32], 0x2") == "add dword ptr [esp + 0x20], 0x2"
    assert hex_literals("rt_stack1: .fill 4096, 1, 0") == "rt_stack1: .fill 0x1000, 0x1, 0x0"
    assert hex_literals("mov al, 010") == "mov al, 0x8"       # a leading 0 is octal, as in LLVM
