# include/ring3_enter.S - the kernel half of the ring-3 system-call loops (nano_syscall*.S and
# their nano_user_base*.S baselines), spliced into each one's main with .include: it loads TR,
# gives gates 0x80 and 0x81 DPL 3 and enters ring 3 with iretd, at a loop whose body (the one
# line the pair differs in) the includer writes next, then includes include/ring3_leave.S.
# The includer defines K.
    mov eax, 0x80
    mov ebx, k_null
    mov cl, 0xee                        # 32-bit interrupt gate, DPL 3: callable from ring 3
    call idt_set_gate
    mov eax, 0x81
    mov ebx, k_done
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax
    mov eax, SEL_UDATA                  # a ring-0 DS would be nulled by the iretd to ring 3
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    push eax                            # SS
    mov eax, u_stack_top
    push eax                            # ESP
    push 0x002                          # EFLAGS: IF=0, IOPL=0
    mov eax, SEL_UCODE
    push eax                            # CS
    mov eax, u_loop_start
    push eax                            # EIP
    iretd

u_loop_start:                           # ring 3
    mov ecx, K
m_loop:
