# nano_user_base.S - the baseline for nano_syscall.S: the same ring-3 loop, `nop` where it has `int 0x80`.
#
# Everything else (the gates, TR, the iretd to ring 3, `int 0x81` to finish) is nano_syscall.S's,
# so subtracting its wall time leaves only the cost of the K system calls.

K = 100000

main:
    .include "include/ring3_enter.S"
    nop
    .include "include/ring3_leave.S"

.include "../../guests/runtime.S"
