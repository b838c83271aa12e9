# iret_frame_monitor.S - an iretd with ESP in the monitor's area.
#
# The kernel points ESP at 0xFFC23000 and runs `iretd`. On the bare machine that address is
# unassigned space: it reads as zeros, so the CPU loads a null CS and raises #GP; the frame it
# pushes is dropped too, so the #GP handler here takes a fresh stack before anything else and just
# says which fault it is. Under trap 0xFFC23000 is hvsim's stack page: the real iretd in ring 1 read
# the monitor's zeros and faulted, and the monitor, popping the frame itself from guest memory,
# raised on an address outside RAM.

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
    mov esp, 0xffc23000
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

x_name:     .asciz "iret_frame_monitor\n"
x_try:      .asciz "kernel: esp = 0xffc23000; iretd\n"
x_survived: .asciz "kernel: iretd went through\n"
x_gp_msg:   .asciz "kernel: #GP, handled on a fresh stack\n"
x_ss_msg:   .asciz "kernel: #SS, handled on a fresh stack\n"

.include "hostile.S"
