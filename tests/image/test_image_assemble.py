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
