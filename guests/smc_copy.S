# smc_copy.S - self-modifying code: code copied into a data page and called, then replaced.
#
# What a loader or a JIT does: bytes are written into RAM as data (a dword loop, outside the
# image at 3 MiB) and then called. Three rounds over the same address: function A, then B
# over it, then A again. Each call must run what was copied last: the translation of the
# previous round is stale. (rep movsb over code is smc_repmovs.S.)

C_BUF = 0x300000

main:
    mov esi, c_name
    call puts
    mov esi, c_fn_a
    call c_copy_and_call
    mov esi, c_round1
    call put_kv_hex
    mov esi, c_fn_b
    call c_copy_and_call
    mov esi, c_round2
    call put_kv_hex
    mov esi, c_fn_a
    call c_copy_and_call
    mov esi, c_round3
    call put_kv_hex
    mov al, 0
    ret

# ESI = a function (16 bytes, position-independent): copy it to C_BUF, call it with EBX = 0x10.
c_copy_and_call:
    push ebx
    push ecx
    push esi
    push edi
    mov edi, C_BUF
    mov ecx, 4
c_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz c_copy
    mov ebx, 0x10
    mov eax, C_BUF
    call eax
    pop edi
    pop esi
    pop ecx
    pop ebx
    ret

.balign 16, 0
c_fn_a:                                 # EAX = 0xa1a1a100 + EBX
    mov eax, 0xa1a1a100
    add eax, ebx
    ret
.balign 16, 0
c_fn_b:                                 # EAX = EBX * 3 + 0xb0
    lea eax, [ebx + ebx * 2 + 0xb0]
    ret
.balign 16, 0

c_name:   .asciz "smc_copy\n"
c_round1: .asciz "A copied and called: "
c_round2: .asciz "B copied over A: "
c_round3: .asciz "A copied over B: "

.include "runtime.S"
