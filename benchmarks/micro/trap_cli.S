# trap_cli.S - micro-benchmark: K privileged instructions (`cli`).
#
# Under trap the kernel runs in ring 1, so each `cli` raises #GP and the monitor decodes and
# emulates it on the virtual IF; under native it is one ordinary instruction. Paired with
# trap_base.S (the same loop with `nop`): (wall(trap_cli) - wall(trap_base)) / K is the cost of
# one trapped-and-emulated privileged instruction.

K = 50000

main:
    mov ecx, K
m_loop:
    cli
    dec ecx
    jnz m_loop
    mov al, 0
    ret

.include "../../guests/runtime.S"
