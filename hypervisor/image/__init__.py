"""Kernel images: building them from guest source and deciding how a boot loader loads them."""
from hypervisor.image.assemble import assemble_file, build_image
from hypervisor.image.multiboot import (
    BOOT_MAGIC,
    MULTIBOOT_INFO_ADDR,
    KernelImage,
    LoadSegment,
    multiboot_info,
    parse_kernel,
)

__all__ = [
    "BOOT_MAGIC",
    "MULTIBOOT_INFO_ADDR",
    "KernelImage",
    "LoadSegment",
    "assemble_file",
    "build_image",
    "multiboot_info",
    "parse_kernel",
]
