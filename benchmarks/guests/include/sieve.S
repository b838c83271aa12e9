# include/sieve.S - the sieve the compute benchmarks share, spliced into each one's main with .include
# (text, not a call: every guest runs exactly the same instructions, so its count stays the
# one recorded in benchmarks/results). The includer defines REPEAT, SIEVE_N and SIEVE, and the
# strings c_result and c_repeats; EBP counts the repeats. Prints the prime count and REPEAT,
# then returns from main with AL = 0.
    mov ebp, REPEAT
c_repeat:
    mov edi, SIEVE
    mov ecx, SIEVE_N
    mov al, 1
    rep stosb
    mov byte ptr [SIEVE], 0
    mov byte ptr [SIEVE + 1], 0
    mov ebx, 2
c_outer:
    mov eax, ebx
    mul eax                             # i * i (EDX is clobbered, and is 0 here)
    cmp eax, SIEVE_N
    jae c_count
    cmp byte ptr [SIEVE + ebx], 0
    je c_next
c_inner:
    mov byte ptr [SIEVE + eax], 0
    add eax, ebx
    cmp eax, SIEVE_N
    jb c_inner
c_next:
    inc ebx
    jmp c_outer
c_count:
    xor eax, eax
    xor esi, esi
c_count_loop:
    movzx edx, byte ptr [SIEVE + esi]
    add eax, edx
    inc esi
    cmp esi, SIEVE_N
    jb c_count_loop
    dec ebp
    jnz c_repeat
    mov esi, c_result
    call put_kv_dec
    mov eax, REPEAT
    mov esi, c_repeats
    call put_kv_dec
    mov al, 0
    ret
