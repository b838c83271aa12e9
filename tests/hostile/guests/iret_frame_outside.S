# iret_frame_outside.S - an iretd whose frame is outside RAM.
#
# The kernel points ESP at 0xF0000000, outside RAM, and runs `iretd`. On the bare machine that
# address is unassigned space: it reads as zeros, so the CPU loads a null CS and raises #GP; the
# frame it pushes is dropped too, so the #GP handler here takes a fresh stack before anything else
# and just says which fault it is. hvsim maps nothing there: the CPU's own read of the frame stops
# the run (a guest crash), and a monitor that pops the frame itself (trap's iretd emulation) must
# not raise on the address either.

main:
    call hv_setup
    mov eax, 12
    mov ebx, x_ss
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 13
    mov ebx, x_gp
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    mov esi, x_name
    call puts
    mov esi, x_try
    call puts
    mov esp, 0xf0000000
    iretd
    mov esp, hv_stack1_top
    mov esi, x_survived
    call puts
    mov al, 0
    jmp exit

x_ss:
    mov esp, hv_stack1_top
    mov esi, x_ss_msg
    jmp x_report
x_gp:
    mov esp, hv_stack1_top
    mov esi, x_gp_msg
x_report:
    mov eax, SEL_KDATA
    mov ds, eax
    mov ss, eax
    call puts
    mov al, 0
    jmp exit

x_name:     .asciz "iret_frame_outside\n"
x_try:      .asciz "kernel: esp = 0xf0000000; iretd\n"
x_survived: .asciz "kernel: iretd went through\n"
x_gp_msg:   .asciz "kernel: #GP, handled on a fresh stack\n"
x_ss_msg:   .asciz "kernel: #SS, handled on a fresh stack\n"

.include "hostile.S"
