# nano_syscall.S - nanobenchmark: K system calls from ring 3 (`int 0x80`, a handler that only irets).
#
# The kernel loads TR (ss0:esp0 from the runtime's TSS), gives gates 0x80 and 0x81 DPL 3, and
# enters ring 3 with iretd. The user loop does `int 0x80` K times: each is a ring 3 -> 0 delivery
# with a stack switch, and an `iretd` back to ring 3. Then `int 0x81` ends the run (exit code 0).
# Under native the monitor delivers the int (Unicorn never uses the guest's IDT) and the iretd
# runs natively; under trap the kernel's iretd runs in ring 1 and is emulated too: two exits per
# call. Paired with nano_user_base.S (the same ring-3 loop with `nop`).

K = 100000

main:
    .include "include/ring3_enter.S"
    int 0x80
    .include "include/ring3_leave.S"

.include "../../guests/runtime.S"
