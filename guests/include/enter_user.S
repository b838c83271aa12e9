# include/enter_user.S - enter ring 3 at user_main, on u_stack_top, with IF=0: spliced into a
# kernel's code with .include once it has loaded TR (usermode.S, hvm_privileged.S). Every data
# segment register gets the ring-3 data selector first: a ring-0 one would be nulled by the
# iretd to ring 3. The includer defines user_main and u_stack_top.
    mov eax, SEL_UDATA
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    # (keystone encodes `push CONSTANT_SYMBOL` as a 16-bit push: go through EAX)
    push eax                            # SS = SEL_UDATA
    mov eax, u_stack_top
    push eax                            # ESP
    push 0x002                          # EFLAGS: IF=0, IOPL=0
    mov eax, SEL_UCODE
    push eax                            # CS
    mov eax, user_main
    push eax                            # EIP
    iretd
