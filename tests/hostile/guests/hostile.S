# hostile.S - the kernel every attack guest shares: it reports each exception it receives.
#
# An attack guest in this directory tries one thing a hostile guest would try against the monitor
# and prints, one line per fact, what happened. Whatever the CPU does in answer - a fault, a task
# switch, nothing at all - must be visible on the console, so that the same guest can be run on
# the bare machine (qemu-system-i386) and under every hvsim technique and the consoles compared.
# This file gives it the means:
#
#   hv_setup        installs a reporting handler for exceptions 0-19 and the int 0x80 system call,
#                   loads the larger GDT below (the runtime's entries plus ring-1/ring-2 segments
#                   and spare slots for attack descriptors), loads TR, masks every PIC line
#   hv_enter_ring   EAX = EIP, EBX = CS, ECX = EFLAGS, EDX = SS (also put in DS/ES/FS/GS),
#                   ESI = ESP: an iretd to another ring; never returns
#   hv_print_cs     prints "<ESI>real cs rpl N": `mov eax, cs` shows the ring the CPU really runs
#                   in (under trap the guest kernel's is 1; an RPL of 0 there is an escape)
#   hv_escaped      what an escape payload calls first (`mov eax, hv_escaped; call eax`): it sets
#                   hv_pwned and spins 4,000,000 instructions, see below
#   fault_resume    if nonzero, the next exception handler sends the faulting code there (and
#                   clears it) instead of ending the run with exit code 0x40 | vector
#
# A handler prints "kernel: vector 0xNN from ring R" (R: the CS RPL in the frame), the error code
# for the vectors that push one and CR2 for #PF. int 0x80 from any ring: EAX = 1 prints the string
# at EBX, EAX = 2 ends the run with exit code BL, EAX = 3 prints the string at ESI and EBX in hex.
# PWNED_EXIT is the exit code an escape payload uses, so that a test cannot miss one. Exit codes
# stay below 0x80: QEMU's exit status is (code << 1) | 1 in 8 bits, so bit 7 would be lost.
#
# Guests include this file at their end, and it includes guests/runtime.S (an .include path is
# relative to the including file). keystone 0.9.2, besides the traps in guests/README.md, silently
# mis-assembles an immediate `NUMBER + SYMBOL` (`mov edi, 0xffc10000 + SLOT_A` became
# `mov edi, [0x50]`) and `[label + SYMBOL]` (the label is dropped): write `label + SYMBOL` or
# `[reg + SYMBOL + n]` instead.

PWNED_EXIT = 0x66
SEL_R1CODE = 0x31        # ring-1 code, flat (GDT entry 6, RPL 1)
SEL_R1DATA = 0x39        # ring-1 data
SEL_R2CODE = 0x42        # ring-2 code (entry 8, RPL 2)
SEL_R2DATA = 0x4a        # ring-2 data
SLOT_A = 0x50            # spare GDT slots for the attack's own descriptors
SLOT_B = 0x58
SLOT_C = 0x60

hv_setup:
    pushad
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    # The runtime has filled its GDT (and the TSS descriptor): copy its six entries into ours.
    mov esi, gdt
    mov edi, hv_gdt
    mov ecx, 12
    .byte 0xf3, 0xa5                    # rep movsd (keystone rejects the mnemonic)
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    .byte 0xea; .long hv_reload; .word SEL_KCODE
hv_reload:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, SEL_TSS
    ltr ax
    xor eax, eax
hv_install:
    mov ebx, dword ptr [hv_vectors + eax * 4]
    mov cl, 0x8e                        # interrupt gate, DPL 0
    call idt_set_gate
    inc eax
    cmp eax, 20
    jb hv_install
    mov eax, 0x80
    mov ebx, hv_syscall
    mov cl, 0xee                        # interrupt gate, DPL 3: callable from every ring
    call idt_set_gate
    call idt_load
    popad
    ret

hv_enter_ring:
    mov ds, edx
    mov es, edx
    mov fs, edx
    mov gs, edx
    push edx
    push esi
    push ecx
    push ebx
    push eax
    iretd

hv_print_cs:
    push eax
    mov eax, cs
    and eax, 3
    jnz hv_print_cs_out
    mov dword ptr [hv_rpl0_seen], 1     # until the line is out: see hv_report_marks
hv_print_cs_out:
    call puts
    call putdec
    call putnl
    mov dword ptr [hv_rpl0_seen], 0
    pop eax
    ret

# Code at real ring 0 under trap may find the console refused to it (the monitor believes another
# ring runs), and its first `out` then faults before it has said anything; the fault may not even
# be deliverable (its SS is the monitor's). So an escape leaves two more traces: hv_escaped marks
# memory (hv_pwned) and hv_print_cs marks RPL 0 until its line is out (hv_rpl0_seen), and every
# exception or system call the kernel takes reports the marks; and hv_escaped spins 4,000,000
# instructions first, which no attack guest comes near otherwise, so the run's instruction count
# shows the payload ran even when nothing else does.
hv_escaped:
    mov dword ptr [hv_pwned], 1
    push ecx
    mov ecx, 0x1e8480                   # 2,000,000 turns of two instructions
hv_escaped_spin:
    dec ecx
    jnz hv_escaped_spin
    pop ecx
    ret

hv_report_marks:
    cmp dword ptr [hv_rpl0_seen], 0
    je hv_report_pwned
    mov dword ptr [hv_rpl0_seen], 0
    push esi
    mov esi, hv_msg_rpl0
    call puts
    pop esi
hv_report_pwned:
    cmp dword ptr [hv_pwned], 0
    jne hv_report_exit
    ret
hv_report_exit:
    mov esi, hv_msg_pwned
    call puts
    mov al, PWNED_EXIT
    jmp exit

# Exceptions: every stub leaves [esp] = vector, [esp + 4] = error code (or -1 if none).
hv_v0:  push -1
        push 0
        jmp hv_fault
hv_v1:  push -1
        push 1
        jmp hv_fault
hv_v2:  push -1
        push 2
        jmp hv_fault
hv_v3:  push -1
        push 3
        jmp hv_fault
hv_v4:  push -1
        push 4
        jmp hv_fault
hv_v5:  push -1
        push 5
        jmp hv_fault
hv_v6:  push -1
        push 6
        jmp hv_fault
hv_v7:  push -1
        push 7
        jmp hv_fault
hv_v8:  push 8
        jmp hv_fault
hv_v9:  push -1
        push 9
        jmp hv_fault
hv_v10: push 10
        jmp hv_fault
hv_v11: push 11
        jmp hv_fault
hv_v12: push 12
        jmp hv_fault
hv_v13: push 13
        jmp hv_fault
hv_v14: push 14
        jmp hv_fault
hv_v15: push -1
        push 15
        jmp hv_fault
hv_v16: push -1
        push 16
        jmp hv_fault
hv_v17: push 17
        jmp hv_fault
hv_v18: push -1
        push 18
        jmp hv_fault
hv_v19: push -1
        push 19
        jmp hv_fault

hv_fault:
    pushad
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov ebp, esp                        # [ebp+32] vector, +36 error, +40 EIP, +44 CS, +48 EFLAGS
    call hv_report_marks
    mov esi, hv_msg_vector
    call puts
    mov eax, dword ptr [ebp + 32]
    call puthex32
    mov esi, hv_msg_ring
    call puts
    mov eax, dword ptr [ebp + 44]
    and eax, 3
    call putdec
    call putnl
    mov eax, dword ptr [ebp + 36]
    cmp eax, -1
    je hv_fault_cr2
    mov esi, hv_msg_error
    call put_kv_hex
hv_fault_cr2:
    cmp dword ptr [ebp + 32], 14
    jne hv_fault_resume
    mov eax, cr2
    mov esi, hv_msg_cr2
    call put_kv_hex
hv_fault_resume:
    mov eax, dword ptr [fault_resume]
    test eax, eax
    jz hv_fault_exit
    mov dword ptr [ebp + 40], eax
    mov dword ptr [fault_resume], 0
    popad
    add esp, 8
    iretd
hv_fault_exit:
    mov eax, dword ptr [ebp + 32]
    or al, 0x40                         # QEMU's exit status keeps only 7 bits of the code
    jmp exit

hv_syscall:
    pushad
    mov ecx, SEL_KDATA
    mov ds, ecx
    mov es, ecx
    call hv_report_marks
    cmp eax, 1
    je hv_sys_write
    cmp eax, 2
    je hv_sys_exit
    cmp eax, 3
    je hv_sys_hex
    mov esi, hv_msg_badsys
    call put_kv_hex
    popad
    iretd
hv_sys_write:
    mov esi, ebx
    call puts
    popad
    iretd
hv_sys_exit:
    mov eax, ebx
    jmp exit
hv_sys_hex:
    mov eax, ebx
    call put_kv_hex
    popad
    iretd

fault_resume: .long 0
hv_pwned:     .long 0
hv_rpl0_seen: .long 0
hv_msg_vector: .asciz "kernel: vector "
hv_msg_ring:   .asciz " from ring "
hv_msg_error:  .asciz "kernel: error code "
hv_msg_cr2:    .asciz "kernel: cr2 "
hv_msg_badsys: .asciz "kernel: unknown system call "
hv_msg_rpl0:   .asciz "kernel: code before this exception saw real cs rpl 0\n"
hv_msg_pwned:  .asciz "PWNED: an escape payload ran (its mark is set)\n"

.balign 4, 0
hv_vectors:
    .long hv_v0, hv_v1, hv_v2, hv_v3, hv_v4, hv_v5, hv_v6, hv_v7, hv_v8, hv_v9
    .long hv_v10, hv_v11, hv_v12, hv_v13, hv_v14, hv_v15, hv_v16, hv_v17, hv_v18, hv_v19

.balign 8, 0
hv_gdt:
    .fill 6 * 8, 1, 0                   # 0x00-0x28: the runtime's entries, copied by hv_setup
    .long 0x0000ffff, 0x00cfba00        # 0x30 ring-1 code, flat
    .long 0x0000ffff, 0x00cfb200        # 0x38 ring-1 data
    .long 0x0000ffff, 0x00cfda00        # 0x40 ring-2 code
    .long 0x0000ffff, 0x00cfd200        # 0x48 ring-2 data
    .long 0, 0                          # 0x50 SLOT_A
    .long 0, 0                          # 0x58 SLOT_B
    .long 0, 0                          # 0x60 SLOT_C
hv_gdt_end:
.balign 4, 0
    .word 0
hv_gdt_ptr:
    .word hv_gdt_end - hv_gdt - 1
    .long hv_gdt

.balign 16, 0
hv_stack1:                              # stacks for code the attacks run in rings 1, 2 and 3
    .fill 4096, 1, 0
hv_stack1_top:
hv_stack2:
    .fill 4096, 1, 0
hv_stack2_top:
hv_stack3:
    .fill 4096, 1, 0
hv_stack3_top:

.include "../../../guests/runtime.S"
