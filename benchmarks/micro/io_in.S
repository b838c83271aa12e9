# io_in.S - micro-benchmark: K port-I/O exits (`in al, dx` from the UART scratch register).
#
# Paired with io_base.S, which runs the same loop with `mov al, 0` in place of the `in`;
# (wall(io_in) - wall(io_base)) / K is the cost of one I/O exit round trip: guest -> hook ->
# port bus -> device -> guest. Nothing is printed inside the loop, so nothing else exits.

K = 200000

main:
    mov ecx, K
    mov dx, COM1 + 7
m_loop:
    in al, dx
    dec ecx
    jnz m_loop
    mov al, 0
    ret

.include "../../guests/runtime.S"
