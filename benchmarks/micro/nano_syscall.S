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
    int 0x80
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

.include "../../guests/runtime.S"
