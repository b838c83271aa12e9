# pop_ss_monitor.S - pop ss with ESP in the monitor's area.
#
# The kernel points ESP at 0xFFC23000 and runs `pop ss`. On the bare machine that address is
# unassigned space: it reads as zero, and a null SS is a #GP; the frame the CPU pushes is dropped
# too, so the #GP handler here takes a fresh stack before anything else and just says which fault
# it is. Under trap 0xFFC23000 is hvsim's stack page: the real pop ss in ring 1 read the monitor's
# zero and faulted, and the monitor's emulator, reading the selector from guest memory itself,
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
    pop ss
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

x_name:     .asciz "pop_ss_monitor\n"
x_try:      .asciz "kernel: esp = 0xffc23000; pop ss\n"
x_survived: .asciz "kernel: pop ss went through\n"
x_gp_msg:   .asciz "kernel: #GP, handled on a fresh stack\n"
x_ss_msg:   .asciz "kernel: #SS, handled on a fresh stack\n"

.include "hostile.S"
