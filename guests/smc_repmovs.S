# smc_repmovs.S - self-modifying code: rep movsb over code.
#
# A string instruction is many stores from one instruction, which QEMU runs one iteration at a
# time. Two cases, each checked by what the rewritten code returns:
#   - a function that has run (and so has been translated) is overwritten by `rep movsb` with
#     the bytes of another and called again: the new bytes must run.
#   - `rep movsb` overwrites the instruction right after itself (`mov eax, 0x11111111`
#     becomes `mov eax, 0x22222222`): the CPU must run the new instruction, as x86 promises
#     for a store to the next instruction.
# In a page of its own (see smc_next.S for why).

main:
    mov esi, r_name
    call puts
    call r_over_function
    mov esi, r_func_msg
    call put_kv_hex
    call r_over_next
    mov esi, r_next_msg
    call put_kv_hex
    mov al, 0
    ret

r_name:     .asciz "smc_repmovs\n"
r_func_msg: .asciz "function before and after rep movsb (high/low word): "
r_next_msg: .asciz "the instruction after rep movsb: "

.balign 0x1000, 0
# EAX = old result << 16 | new result.
r_over_function:
    push ebx
    push ecx
    push esi
    push edi
    call r_func
    mov ebx, eax
    shl ebx, 16
    mov esi, r_replacement
    mov edi, r_func
    mov ecx, 8
    rep movsb
    call r_func
    or eax, ebx
    pop edi
    pop esi
    pop ecx
    pop ebx
    ret

r_over_next:
    push ecx
    push esi
    push edi
    mov esi, r_new_mov
    mov edi, r_next
    mov ecx, 5
    rep movsb
r_next:
    mov eax, 0x11111111
    pop edi
    pop esi
    pop ecx
    ret

.balign 8, 0
r_func:                                 # returns 0xaaaa
    mov eax, 0xaaaa
    ret
    nop
    nop
.balign 8, 0
r_replacement:                          # 8 bytes that return 0x5555
    mov eax, 0x5555
    ret
    nop
    nop
r_new_mov:
    mov eax, 0x22222222

.balign 0x1000, 0
.include "runtime.S"
