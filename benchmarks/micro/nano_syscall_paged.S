# nano_syscall_paged.S - nanobenchmark: nano_syscall.S with paging on: K `int 0x80` from ring 3.
# hvsim: paging
#
# The same kernel, gates, TSS and ring-3 loop as nano_syscall.S (a handler that only irets),
# after `paging_on` (paging.S: 0-8 MiB identity, user pages) has set CR0.PG: a system call as
# a paged kernel takes it, where every access of the delivery (the IDT entry, the GDT's code
# descriptor, the TSS's esp0, the ring-0 stack) is translated through the guest's tables.
# Under native Unicorn's MMU does that; under trap and hvm the C TLB fill (shadow paging, EPT).
# Paired with nano_user_base_paged.S (the same ring-3 loop with `nop`).

K = 20000

main:
    call paging_on
    .include "include/ring3_enter.S"
    int 0x80
    .include "include/ring3_leave.S"

.include "paging.S"
.include "../../guests/runtime.S"
