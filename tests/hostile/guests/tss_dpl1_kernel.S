# tss_dpl1_kernel.S - a DPL-1 TSS in the guest's GDT, loaded by lgdt, then a far jump to it.
#
# A TSS descriptor's DPL says which rings may switch to the task; the task's own CS says which ring
# it runs in. Under trap the guest kernel runs at real ring 1, so a DPL-1 TSS copied unchanged into
# the shadow GDT lets it start a real hardware task switch, with CS:EIP and SS:ESP taken from guest
# memory. Here the TSS holds a ring-0 task of the guest's own (CS 0x08, SS 0x10), which
# the bare machine runs at CPL 0, and which trap must run in virtual ring 0 or refuse.
# The task reads CR0 and prints its real CS RPL, then ends the run; a fault on the way is printed
# by the kernel's handler.

main:
    call hv_setup
    mov esi, t_name
    call puts
    # SLOT_A: a present 32-bit TSS, DPL 1, over t_tss (limit 103).
    mov eax, t_tss
    mov ebx, hv_gdt + SLOT_A
    mov word ptr [ebx], 103
    mov word ptr [ebx + 2], ax
    shr eax, 16
    mov byte ptr [ebx + 4], al
    mov byte ptr [ebx + 5], 0xa9
    mov byte ptr [ebx + 6], 0
    mov byte ptr [ebx + 7], ah
    mov dword ptr [t_tss + 0x20], t_task        # EIP
    mov dword ptr [t_tss + 0x24], 0x2           # EFLAGS
    mov dword ptr [t_tss + 0x38], hv_stack1_top # ESP
    mov dword ptr [t_tss + 0x4c], SEL_KCODE           # CS
    mov eax, SEL_KDATA
    mov dword ptr [t_tss + 0x48], eax           # ES
    mov dword ptr [t_tss + 0x50], eax           # SS
    mov dword ptr [t_tss + 0x54], eax           # DS
    mov dword ptr [t_tss + 0x58], eax           # FS
    mov dword ptr [t_tss + 0x5c], eax           # GS
    mov word ptr [t_tss + 0x66], 104            # no I/O bitmap
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]: the monitor sees the new descriptor
    mov esi, t_jump
    call puts
    .byte 0xea; .long 0; .word SLOT_A           # jmp far SLOT_A:0 - a task switch
    mov esi, t_fell
    call puts
    mov al, 1
    ret

t_task:
    mov eax, cr0
    mov esi, t_in_task
    call puts
    mov esi, t_cs
    call hv_print_cs
    mov al, 0
    jmp exit

t_name:    .asciz "tss_dpl1_kernel\n"
t_jump:    .asciz "kernel: jmp far to the DPL-1 TSS\n"
t_fell:    .asciz "kernel: the jump fell through\n"
t_in_task: .asciz "task: running, cr0 read\n"
t_cs:      .asciz "task: real cs rpl "

.balign 16, 0
t_tss:
    .fill 104, 1, 0

.include "hostile.S"
