# meminfo.S - what the boot loader says about memory: the Multiboot info structure.
#
# A kernel learns how much RAM it has only from its boot loader (EBX -> multiboot info). This
# guest prints the parts every loader in this project must agree on: that mem_* (flag bit 0)
# and mmap (bit 6) are present, mem_lower/mem_upper, and each e820-style memory map entry.
# Under QEMU it was the probe that fixed the values in hypervisor/image/multiboot.py. It prints
# no addresses: where the info lives is the loader's choice.

main:
    mov esi, mi_name
    call puts
    mov ebx, dword ptr [boot_info]
    mov eax, dword ptr [ebx]
    and eax, 0x41
    mov esi, mi_flags
    call put_kv_hex
    mov eax, dword ptr [ebx + 4]
    mov esi, mi_lower
    call put_kv_dec
    mov eax, dword ptr [ebx + 8]
    mov esi, mi_upper
    call put_kv_dec
    mov ecx, dword ptr [ebx + 44]       # mmap_length
    mov edi, dword ptr [ebx + 48]       # mmap_addr
    add ecx, edi
mi_loop:
    cmp edi, ecx
    jae mi_done
    mov esi, mi_base
    mov eax, dword ptr [edi + 4]
    call puts
    call puthex32
    mov esi, mi_len
    mov eax, dword ptr [edi + 12]
    call puts
    call puthex32
    mov esi, mi_type
    mov eax, dword ptr [edi + 20]
    call puts
    call putdec
    mov eax, dword ptr [edi + 8]        # high halves, expected 0 below 4 GiB
    or eax, dword ptr [edi + 16]
    jz mi_low_only
    mov esi, mi_high
    call puts
mi_low_only:
    call putnl
    add edi, dword ptr [edi]            # the size field does not count itself
    add edi, 4
    jmp mi_loop
mi_done:
    mov al, 0
    ret

mi_name:  .asciz "meminfo\n"
mi_flags: .asciz "flags & (mem|mmap): "
mi_lower: .asciz "mem_lower KiB: "
mi_upper: .asciz "mem_upper KiB: "
mi_base:  .asciz "mmap base="
mi_len:   .asciz " len="
mi_type:  .asciz " type="
mi_high:  .asciz " (above 4 GiB)"

.include "runtime.S"
