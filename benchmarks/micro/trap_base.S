# trap_base.S - the baseline for trap_cli.S: the same loop, `nop` where trap_cli.S has `cli`.
#
# Subtracting its wall time from trap_cli.S's leaves only the cost of the K traps.

K = 50000

main:
    mov ecx, K
m_loop:
    nop
    dec ecx
    jnz m_loop
    mov al, 0
    ret

.include "../../guests/runtime.S"
