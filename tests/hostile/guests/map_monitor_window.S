# map_monitor_window.S - the guest's own pages where trap's monitor once lived.
#
# Before shadow paging, trap kept its tables at linear 0xFFC00000-0xFFC24000 in the guest's own
# address space (without the C TLB fill it still does). A paged guest may put anything at any
# linear address, so the kernel maps 0xFFC00000-0xFFC3FFFF to its own RAM at 0x400000 (4 KiB
# pages), writes a pattern through that window, reads it back through the identity map, and
# jumps into code it copies there. On the bare machine this simply works; under trap and hvm
# it must too: the monitor lies above 4 GiB and the guest's mappings are its own business.

PD = 0x9000
PT = 0xa000

main:
    call hv_setup
    mov esi, w_name
    call puts
    mov edi, PD
    xor eax, eax
    mov ecx, 0x800
w_clear:
    mov dword ptr [edi + ecx * 4 - 4], eax      # the directory and the table
    dec ecx
    jnz w_clear
    mov dword ptr [edi], 0x00000083             # 0-4 MiB: identity (4 MiB page)
    mov dword ptr [edi + 4], 0x00400083         # 4-8 MiB: identity
    mov dword ptr [edi + 0xffc], PT | 3         # 0xFFC00000-: a page table
    mov edi, PT
    mov eax, 0x00400003
    xor ecx, ecx
w_fill:
    mov dword ptr [edi + ecx * 4], eax          # 0xFFC00000 + n * 4 KiB -> 0x400000 + n * 4 KiB
    add eax, 0x1000
    inc ecx
    cmp ecx, 0x40
    jne w_fill
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, w_on
    call puts
    mov edi, 0xffc00000
    mov eax, 0x5a5a0000
    mov ecx, 0x10000                            # 256 KiB of pattern
w_pattern:
    mov dword ptr [edi], eax
    inc eax
    add edi, 4
    dec ecx
    jnz w_pattern
    mov eax, dword ptr [0x400000]
    mov esi, w_first
    call put_kv_hex
    mov eax, dword ptr [0x423004]
    mov esi, w_middle
    call put_kv_hex
    mov esi, w_code
    mov edi, 0xffc22000
    mov ecx, w_code_end - w_code
    .byte 0xf3, 0xa4                            # rep movsb
    mov eax, 0xffc22000
    call eax
    mov esi, w_ran
    call put_kv_hex
    mov al, 0
    ret

w_code:
    mov eax, 0x1234abcd                          # runs at 0xffc22000
    ret
w_code_end:

w_name:   .asciz "map_monitor_window\n"
w_on:     .asciz "kernel: paging on, 0xffc00000-0xffc3ffff -> 0x400000\n"
w_first:  .asciz "kernel: [0x400000] = "
w_middle: .asciz "kernel: [0x423004] = "
w_ran:    .asciz "kernel: code at 0xffc22000 returned "

.include "hostile.S"
