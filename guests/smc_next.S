# smc_next.S - self-modifying code: a store into the very next instruction.
#
# x86 guarantees that a store to an instruction that is about to run is seen by it (the SDM's
# "self-modifying code" rule; QEMU's TCG gets it right by ending the translated block at the
# store and translating again from the next instruction). Each pass of the loop below writes
# the low byte of the immediate of the `mov eax, imm32` that follows the store, in the same
# translated block; the sum shows whether the new immediate ran every time. A second loop
# patches the opcode itself: `add edi, eax` (01 c7) becomes `sub edi, eax` (29 c7) on odd
# passes. The code lives in a page of its own (`.balign 0x1000`): under trap the runtime's
# GDT page is write-protected, and a store there takes the monitor's path instead (README,
# known limits).

main:
    mov esi, n_name
    call puts
    call n_patch_immediate
    mov esi, n_imm_msg
    call put_kv_hex
    call n_patch_opcode
    mov esi, n_op_msg
    call put_kv_hex
    mov al, 0
    ret

n_name:    .asciz "smc_next\n"
n_imm_msg: .asciz "sum of 8 patched immediates: "
n_op_msg:  .asciz "add/sub with a patched opcode: "

.balign 0x1000, 0
# EAX = the sum over i = 0..7 of 0x11111100 + i.
n_patch_immediate:
    push ecx
    push edi
    xor ecx, ecx
    xor edi, edi
n_imm_loop:
    mov byte ptr [n_imm + 1], cl        # the immediate of the next instruction
n_imm:
    mov eax, 0x11111100
    add edi, eax
    inc ecx
    cmp ecx, 8
    jne n_imm_loop
    mov eax, edi
    pop edi
    pop ecx
    ret

# EAX = 0x1000 + 0x100 - 0x100 + 0x100 - ... over 6 passes: add on even i, sub on odd i.
n_patch_opcode:
    push ecx
    push edi
    xor ecx, ecx
    mov edi, 0x1000
n_op_loop:
    mov al, 0x01                        # add r/m32, r32
    test cl, 1
    jz n_op_store
    mov al, 0x29                        # sub r/m32, r32
n_op_store:
    mov byte ptr [n_op], al             # the opcode of the instruction after the next one
    mov eax, 0x100
n_op:
    add edi, eax
    inc ecx
    cmp ecx, 6
    jne n_op_loop
    mov eax, edi
    pop edi
    pop ecx
    ret

.balign 0x1000, 0
.include "runtime.S"
