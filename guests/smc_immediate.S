# smc_immediate.S - self-modifying code: immediates rewritten in a loop, in another block.
#
# A JIT's inner loop: before each call, the caller rewrites two 32-bit immediates of a small
# function (mov eax, i*i, then add eax, i, then ret), so the function's translated block is stale
# on every pass and must be translated again. The sum over i = 0..99 is 328350 + 4950 =
# 333300, and a stale translation anywhere changes it. Then the function's jump is retargeted:
# the rel32 of a `jmp` is rewritten to reach one of two tails that return different values.
# In a page of its own (see smc_next.S for why).

main:
    mov esi, i_name
    call puts
    call i_rewrite_immediates
    mov esi, i_sum_msg
    call put_kv_dec
    call i_retarget_jump
    mov esi, i_jmp_msg
    call put_kv_hex
    mov al, 0
    ret

i_name:    .asciz "smc_immediate\n"
i_sum_msg: .asciz "sum of i*i + i for i < 100: "
i_jmp_msg: .asciz "tails reached (4 bits): "

.balign 0x1000, 0
i_rewrite_immediates:
    push ecx
    push edx
    push edi
    xor ecx, ecx
    xor edi, edi
i_loop:
    mov eax, ecx
    mul ecx                             # EAX = i * i (EDX = 0)
    mov dword ptr [i_func + 1], eax     # mov eax, imm32: the imm32
    mov dword ptr [i_func + 7], ecx     # add eax, imm32 (05 imm32): the imm32
    call i_func
    add edi, eax
    inc ecx
    cmp ecx, 100
    jne i_loop
    mov eax, edi
    pop edi
    pop edx
    pop ecx
    ret

# EAX = four bits, one per pass: 1 where the jump went to i_tail_one.
i_retarget_jump:
    push ebx
    push ecx
    push edx
    xor ecx, ecx
    xor ebx, ebx
i_jloop:
    mov edx, i_tail_zero                # rel32 = target - the end of the jmp
    test cl, 1
    jz i_jstore
    mov edx, i_tail_one
i_jstore:
    sub edx, i_jump_end
    mov dword ptr [i_jump + 1], edx
    call i_jump
    shl ebx, 1
    or ebx, eax
    inc ecx
    cmp ecx, 4
    jne i_jloop
    mov eax, ebx
    pop edx
    pop ecx
    pop ebx
    ret

i_func:
    .byte 0xb8                          # mov eax, imm32
    .long 0x0
    .byte 0x90                          # nop, so the add's immediate is at i_func + 7
    .byte 0x05                          # add eax, imm32
    .long 0x0
    ret

i_jump:
    .byte 0xe9                          # jmp rel32
    .long 0x0
i_jump_end:
    int3                                # never reached: the rel32 always names a tail
i_tail_zero:
    xor eax, eax
    ret
i_tail_one:
    mov eax, 1
    ret

.balign 0x1000, 0
.include "runtime.S"
