# pse36_monitor.S - a 4 MiB page whose PSE-36 bits name physical 0x1_FFC0_0000.
#
# With CR4.PSE, a 4 MiB page-directory entry carries physical-address bits 39:32 in its bits
# 20:13. Under trap the monitor's own tables (the shadow GDT, its IDT and TSS) lie at physical
# 0x1_FFC0_0000, above 4 GiB, precisely so that no 32-bit guest address reaches them; but the
# guest's page tables are not 32-bit addresses. So the kernel maps linear 0x800000 to
# 0x1_FFC0_0000, reads a dword there, counts the nonzero dwords of the first 64 KiB, and writes.
# On the bare machine that is unassigned space (reads 0, writes dropped). hvsim must never let
# the walk hand the CPU that frame: the shadow (and the EPT) refuse it, and the run ends as a
# guest crash at the first access, as an access outside RAM ends it under native.

PD = 0x9000

main:
    call hv_setup
    mov esi, p_name
    call puts
    mov edi, PD
    xor eax, eax
    mov ecx, 0x400
p_clear:
    mov dword ptr [edi + ecx * 4 - 4], eax
    dec ecx
    jnz p_clear
    mov dword ptr [edi], 0x00000083             # 0-4 MiB: identity, present, writable
    mov dword ptr [edi + 8], 0xffc02083         # 8-12 MiB: 0x1_FFC0_0000 (bit 13 = bit 32)
    mov eax, cr4
    or eax, 0x10                                # CR4.PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, p_on
    call puts
    mov esi, p_read
    call puts
    mov eax, dword ptr [0x800000]
    mov esi, p_value
    call put_kv_hex
    mov esi, 0x800000
    xor edx, edx
    mov ecx, 0x4000
p_count:
    cmp dword ptr [esi], 0
    je p_zero
    inc edx
p_zero:
    add esi, 4
    dec ecx
    jnz p_count
    mov eax, edx
    mov esi, p_nonzero
    call put_kv_hex
    mov esi, p_write
    call puts
    mov dword ptr [0x800008], 0x00cf9a00        # a would-be ring-0 code descriptor
    mov dword ptr [0x80000c], 0x0000ffff
    mov esi, p_survived
    call puts
    mov al, 0
    ret

p_name:     .asciz "pse36_monitor\n"
p_on:       .asciz "kernel: paging on, 0x800000 -> physical 0x1ffc00000\n"
p_read:     .asciz "kernel: reading 0x800000\n"
p_value:    .asciz "kernel: [0x800000] = "
p_nonzero:  .asciz "kernel: nonzero dwords "
p_write:    .asciz "kernel: writing a descriptor at 0x800008\n"
p_survived: .asciz "kernel: still running\n"

.include "hostile.S"
