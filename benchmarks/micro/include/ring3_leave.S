# include/ring3_leave.S - the end of the ring-3 loop include/ring3_enter.S starts: K rounds,
# then `int 0x81` ends the run; the two kernel handlers and the user stack.
    dec ecx
    jnz m_loop
    int 0x81
u_spin:
    jmp u_spin

k_null:                                 # ring 0: the system call that does nothing
    iretd

k_done:
    mov al, 0
    jmp exit

.balign 16, 0
u_stack:
    .fill 1024, 1, 0
u_stack_top:
