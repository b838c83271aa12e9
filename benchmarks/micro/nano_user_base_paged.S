# nano_user_base_paged.S - the baseline of nano_syscall_paged.S: nano_user_base.S with paging on.
# hvsim: paging
#
# The same ring-3 loop with `nop` where nano_syscall_paged.S has `int 0x80`, after the same
# `paging_on`, so subtracting its time leaves only the cost of the K system calls.

K = 20000

main:
    call paging_on
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
    nop
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

.include "paging.S"
.include "../../guests/runtime.S"
