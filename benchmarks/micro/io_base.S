# io_base.S - the baseline for io_in.S: the same loop, `mov al, 0` where io_in.S has `in al, dx`.
#
# Subtracting its wall time from io_in.S's leaves only the cost of the K exits.

K = 200000

main:
    mov ecx, K
    mov dx, COM1 + 7
m_loop:
    mov al, 0
    dec ecx
    jnz m_loop
    mov al, 0
    ret

.include "../../guests/runtime.S"
