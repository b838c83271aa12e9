# callret.S - benchmark: control transfer, millions of call/ret pairs.
#
# Binary translators pay for every indirect branch, and `ret` is one: a translation cache must
# look up the return address each time (or predict it). This guest does CALLS call/ret pairs to a
# one-instruction leaf and prints how many the leaf counted. ~0.3 s under raw Unicorn.

CALLS = 5000000

main:
    mov esi, r_name
    call puts
    xor eax, eax
    mov ecx, CALLS
r_loop:
    call r_leaf
    dec ecx
    jnz r_loop
    mov esi, r_result
    call put_kv_dec
    mov al, 0
    ret

r_leaf:
    inc eax
    ret

r_name:   .asciz "callret\n"
r_result: .asciz "call/ret pairs: "

.include "../../guests/runtime.S"
