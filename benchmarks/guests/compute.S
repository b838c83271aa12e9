# compute.S - benchmark: pure computation, no exits at all.
#
# A sieve of Eratosthenes over 2,000,000 bytes of RAM (at 4 MiB, outside the image), REPEAT times.
# It never touches a device or a privileged instruction until it prints, so it measures the cost
# of simply running guest code under a technique (translation, block chaining, memory access);
# ~2.6 s under raw Unicorn, ~0.25 s under QEMU TCG with REPEAT = 10. The answer is 148933.

REPEAT = 10
SIEVE_N = 2000000
SIEVE = 0x400000

main:
    mov esi, c_name
    call puts
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

c_name:    .asciz "compute\n"
c_result:  .asciz "primes below 2000000: "
c_repeats: .asciz "repeats: "

.include "../../guests/runtime.S"
