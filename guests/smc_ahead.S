# smc_ahead.S - self-modifying code: a store into the running translated block, ahead of EIP.
#
# QEMU translates straight-line code into one block and runs it as a whole. A store into that
# block, a few instructions ahead of the one storing, must still be seen when execution gets
# there (x86 has no instruction-cache flush to ask for it): TCG finds the block overlapping the
# store, stops after the storing instruction and translates the rest again. The address comes
# from a register, so nothing about the store is known when the block is translated.
#   - four passes: a dword store rewrites the immediate of a `mov eax, imm32` three
#     instructions later. The loop's block was translated on the first pass with the old
#     immediate, so every pass after the first runs a stale block unless it is dropped.
#   - one byte store turns an `inc edx` (42) four instructions ahead into `dec edx` (4a).
# In a page of its own (see smc_next.S for why).

main:
    mov esi, a_name
    call puts
    call a_dword_ahead
    mov esi, a_dword_msg
    call put_kv_hex
    call a_byte_ahead
    mov esi, a_byte_msg
    call put_kv_hex
    mov al, 0
    ret

a_name:      .asciz "smc_ahead\n"
a_dword_msg: .asciz "sum of immediates stored 3 instructions ahead: "
a_byte_msg:  .asciz "edx after inc patched to dec: "

.balign 0x1000, 0
# EAX = sum over i = 1..4 of 0x01010101 * i = 0x0a0a0a0a.
a_dword_ahead:
    push ebx
    push ecx
    push edi
    mov edi, a_target + 1
    xor ebx, ebx
    mov ecx, 0x01010101
a_dword_loop:
    mov dword ptr [edi], ecx            # the immediate of a_target, three instructions on
    nop
    nop
a_target:
    mov eax, 0x0
    add ebx, eax
    add ecx, 0x01010101
    cmp ecx, 0x05050505
    jne a_dword_loop
    mov eax, ebx
    pop edi
    pop ecx
    pop ebx
    ret

# EAX = EDX after: edx = 0x100, inc edx, then the store, then inc edx (now dec edx) = 0x100.
a_byte_ahead:
    push edx
    push edi
    mov edi, a_flip
    mov edx, 0x100
    inc edx
    mov byte ptr [edi], 0x4a            # `dec edx`, four instructions ahead
    nop
    nop
    nop
a_flip:
    inc edx
    mov eax, edx
    pop edi
    pop edx
    ret

.balign 0x1000, 0
.include "runtime.S"
