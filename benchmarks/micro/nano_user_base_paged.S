# nano_user_base_paged.S - the baseline of nano_syscall_paged.S: nano_user_base.S with paging on.
# hvsim: paging
#
# The same ring-3 loop with `nop` where nano_syscall_paged.S has `int 0x80`, after the same
# `paging_on`, so subtracting its time leaves only the cost of the K system calls.

K = 20000

main:
    call paging_on
    .include "include/ring3_enter.S"
    nop
    .include "include/ring3_leave.S"

.include "paging.S"
.include "../../guests/runtime.S"
