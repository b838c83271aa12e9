# monitor_read.S - the guest kernel, then a ring-3 program, read the monitor's memory.
#
# Under trap, hvsim keeps its shadow GDTs (kernel and user view), its IDT and TSS, the iretd stub
# and its stack at 0xFFC00000-0xFFC24000, inside the guest's 4 GiB flat segments. The guest reads
# every dword of that range, first from its kernel, then from ring 3, and prints how many were not
# zero. On the bare machine the range is unassigned and reads as zeros: any other count is the
# monitor's data (the shadow GDT copies the guest's own descriptors, so it is never all zeros).

MONITOR_BASE = 0xffc00000
MONITOR_DWORDS = 0x9000

main:
    call hv_setup
    mov esi, r_name
    call puts
    mov esi, r_kernel
    call puts
    call r_count
    mov esi, r_kernel_count
    call put_kv_hex
    mov eax, r_user
    mov ebx, SEL_UCODE
    mov ecx, 0x2
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

r_user:
    mov eax, 1
    mov ebx, r_user_reads
    int 0x80
    call r_count
    mov ebx, eax
    mov eax, 3
    mov esi, r_user_count
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

# EAX = the number of nonzero dwords in the monitor's range.
r_count:
    push esi
    push ecx
    mov esi, MONITOR_BASE
    mov ecx, MONITOR_DWORDS
    xor eax, eax
r_count_loop:
    cmp dword ptr [esi], 0
    je r_count_next
    inc eax
r_count_next:
    add esi, 4
    dec ecx
    jnz r_count_loop
    pop ecx
    pop esi
    ret

r_name:         .asciz "monitor_read\n"
r_kernel:       .asciz "kernel: reading 0xffc00000-0xffc24000\n"
r_kernel_count: .asciz "kernel: nonzero dwords "
r_user_reads:   .asciz "user: reading 0xffc00000-0xffc24000\n"
r_user_count:   .asciz "user: nonzero dwords "

.include "hostile.S"
