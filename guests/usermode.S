# usermode.S - a kernel and a user program: rings, the TSS, system calls and a privilege fault.
#
# The kernel loads TR with the runtime's TSS (ss0:esp0 = 0x10:rt_kstack_top) and "returns" with
# iretd to ring-3 code (CS 0x1b, SS 0x23). The user program can only reach the kernel through
# `int 0x80`, a DPL-3 interrupt gate: EAX is the call number (1 write string at EBX, 2 print EBX
# in hex, 3 exit with code EBX). Each time, the CPU switches to the TSS stack, and the kernel reads
# the caller's ring from the CS RPL in the frame and checks that the frame sits at esp0.
# Then the user program runs `cli`, privileged at CPL 3 with IOPL 0: #GP with error code 0, which
# the kernel reports (with the ring it came from), skips, and returns to ring 3. Then `in al, dx`:
# I/O at CPL 3 > IOPL 0 is a #GP too, and the instruction must not have happened (EAX keeps its
# marker). Then the user program exits.

SYS_WRITE = 1
SYS_HEX = 2
SYS_EXIT = 3
SYS_EAX = 4

main:
    mov esi, u_name
    call puts
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov eax, 0x80
    mov ebx, k_syscall
    mov cl, 0xee                        # 32-bit interrupt gate, DPL 3: callable from ring 3
    call idt_set_gate
    mov eax, 13
    mov ebx, k_gp
    mov cl, 0x8e                        # DPL 0: `int 13` from ring 3 would itself be a #GP
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax
    mov esi, u_enter
    call puts
.include "include/enter_user.S"

# ---- ring 3 -------------------------------------------------------------------------------
user_main:
    mov eax, SYS_WRITE
    mov ebx, u_hello
    int 0x80
    mov eax, SYS_HEX
    mov ebx, cs                         # what ring do I think I am in?
    int 0x80
    mov eax, SYS_WRITE
    mov ebx, u_try_cli
    int 0x80
    cli                                 # #GP(0): the kernel skips it
    mov eax, SYS_WRITE
    mov ebx, u_after_cli
    int 0x80
    mov eax, SYS_WRITE
    mov ebx, u_try_in
    int 0x80
    mov dx, 0x3ff
    mov eax, 0x5a5a5a5a
    in al, dx                           # #GP(0) as well: the kernel skips it, AL is untouched
    mov ebx, eax
    mov eax, SYS_EAX
    int 0x80
    mov eax, SYS_EXIT
    mov ebx, 0
    int 0x80
user_spin:
    jmp user_spin

# ---- ring 0 -------------------------------------------------------------------------------
# Frame from ring 3 on the esp0 stack: EIP, CS, EFLAGS, ESP, SS (+ error code below for #GP).
k_syscall:
    pushad
    mov ecx, ds                         # (keystone's `push ds` is a 16-bit push)
    push ecx
    mov ecx, es
    push ecx
    mov ecx, SEL_KDATA
    mov ds, ecx
    mov es, ecx
    lea ebp, [esp + 40]                 # the CPU's frame, past 2 segments and 8 registers
    mov esi, k_sys
    mov ecx, eax
    mov eax, ecx
    call puts
    call putdec
    call k_print_origin
    mov ebx, dword ptr [esp + 24]       # the caller's EBX, saved by pushad
    cmp ecx, SYS_WRITE
    je k_write
    cmp ecx, SYS_HEX
    je k_hex
    cmp ecx, SYS_EXIT
    je k_exit
    cmp ecx, SYS_EAX
    je k_eax
    mov esi, k_bad
    call puts
    jmp k_sys_done
k_write:
    mov esi, ebx
    call puts
    jmp k_sys_done
k_hex:
    mov esi, k_hexmsg
    mov eax, ebx
    call put_kv_hex
    jmp k_sys_done
k_eax:
    mov esi, k_eaxmsg
    mov eax, ebx
    call put_kv_hex
    jmp k_sys_done
k_exit:
    mov esi, k_exitmsg
    mov eax, ebx
    call put_kv_dec
    mov eax, ebx
    jmp exit
k_sys_done:
    pop eax
    mov es, eax
    pop eax
    mov ds, eax
    popad
    iretd

k_gp:
    pushad
    mov ecx, ds                         # (keystone's `push ds` is a 16-bit push)
    push ecx
    mov ecx, es
    push ecx
    mov ecx, SEL_KDATA
    mov ds, ecx
    mov es, ecx
    lea ebp, [esp + 44]                 # past the error code too
    mov esi, k_gpmsg
    mov eax, dword ptr [ebp - 4]        # error code
    call puts
    call puthex32
    call k_print_origin
    add dword ptr [ebp], 1              # skip `cli` (fa) or `in al, dx` (ec)
    pop eax
    mov es, eax
    pop eax
    mov ds, eax
    popad
    add esp, 4
    iretd

# EBP = the CPU's frame: prints " from ring N (frame at esp0: yes|no)".
k_print_origin:
    push eax
    push esi
    mov esi, k_from
    call puts
    mov eax, dword ptr [ebp + 4]
    and eax, 3                          # CS RPL of the interrupted code = its CPL
    call putdec
    mov esi, k_yes
    lea eax, [ebp + 20]                 # five dwords pushed by the CPU on a ring change
    cmp eax, dword ptr [tss + 4]
    je k_origin_print
    mov esi, k_no
k_origin_print:
    call puts
    pop esi
    pop eax
    ret

u_name:      .asciz "usermode\n"
u_enter:     .asciz "kernel: iretd to ring 3\n"
u_hello:     .asciz "user: hello from ring 3\n"
u_try_cli:   .asciz "user: trying cli\n"
u_after_cli: .asciz "user: still running after cli\n"
u_try_in:    .asciz "user: trying in al, dx\n"
k_sys:       .asciz "kernel: syscall "
k_from:      .asciz " from ring "
k_yes:       .asciz " (frame at esp0: yes)\n"
k_no:        .asciz " (frame at esp0: NO)\n"
k_bad:       .asciz "kernel: unknown syscall\n"
k_hexmsg:    .asciz "user: my cs is "
k_eaxmsg:    .asciz "user: eax after the faulting in is "
k_exitmsg:   .asciz "kernel: user exit code "
k_gpmsg:     .asciz "kernel: #GP error="

.balign 16, 0
u_stack:
    .fill 4096, 1, 0
u_stack_top:

.include "runtime.S"
