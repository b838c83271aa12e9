# portio.S - benchmark: I/O exits, the cost every emulated device pays.
#
# Each `out`/`in` to the UART's scratch register (0x3ff) is an exit to the device model under
# every technique, and the scratch register has no side effects, so this measures the round trip
# alone. ITERATIONS pairs, each read-back checked; prints the count and the number of mismatches.

ITERATIONS = 200000

main:
    mov esi, p_name
    call puts
    xor ebx, ebx                        # mismatches
    mov ecx, ITERATIONS
    mov dx, COM1 + 7
p_loop:
    mov al, cl
    xor al, 0x5a
    out dx, al
    mov ah, al
    in al, dx
    cmp al, ah
    je p_ok
    inc ebx
p_ok:
    dec ecx
    jnz p_loop
    mov eax, ITERATIONS
    mov esi, p_result
    call put_kv_dec
    mov eax, ebx
    mov esi, p_bad
    call put_kv_dec
    mov al, 0
    ret

p_name:   .asciz "portio\n"
p_result: .asciz "scratch out/in pairs: "
p_bad:    .asciz "mismatches: "

.include "../../guests/runtime.S"
