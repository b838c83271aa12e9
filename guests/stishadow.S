# stishadow.S - the interrupt shadow: `sti` and `mov ss` delay a pending interrupt by one instruction.
#
# After `sti` the CPU takes no maskable interrupt until the next instruction has run, so
# `sti; ret` or `sti; hlt` can never be torn apart; after `mov ss` it takes neither an interrupt
# nor a debug trap until the next instruction (the `mov esp` that completes the stack switch) has
# run. To make an interrupt pending at a chosen instruction without any timing, the kernel uses
# COM1: writing IER with THRI set while the transmitter is empty raises IRQ4 at once (a level that
# reaches the edge-triggered PIC as one edge), with only IRQ4 unmasked and IF=0.
#   1. `sti; mov dword ptr [marker], 1; nop` with IRQ4 pending: the handler must see marker = 1
#      and a frame EIP just after that mov (the shadow ran, then the interrupt).
#   2. `sti; mov ss, eax; mov esp, ebx` with IRQ4 pending: the mov ss sits in sti's shadow, and
#      QEMU lets only the first of two shadowing instructions inhibit: the interrupt is taken
#      after the mov ss, before the mov esp.
#   3. TF=1 over `mov ss, eax; mov esp, ebx`: no single-step #DB after the mov ss, one after the
#      mov esp (frame EIP just after it).
# The handler saves what it saw; the kernel prints it afterwards (the console is the UART whose
# interrupt is being used, so nothing is printed while IER has THRI set).

COM1_IER = 0x3f9
COM1_IIR = 0x3fa
COM1_LSR = 0x3fd

main:
    mov esi, s_name
    call puts
    mov al, 0xef                        # master mask: only IRQ4 (COM1)
    call pic_remap

    mov eax, 0x24
    mov ebx, s_irq4
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x27
    mov ebx, s_spurious
    call idt_set_gate
    mov eax, 1
    mov ebx, s_debug
    call idt_set_gate
    call idt_load

# ---- 1. sti; mov [marker], 1 -----------------------------------------------------------------
    call s_raise_irq4
    mov dword ptr [s_irr], eax
    mov dword ptr [s_marker], 0
s1_sti:
    sti
    mov dword ptr [s_marker], 1         # the shadow: runs before the handler
s1_after:
    nop
    nop
    cli
    call s_quiet_uart
    mov esi, s_irr_msg
    mov eax, dword ptr [s_irr]
    call put_kv_hex
    mov esi, s_count_msg
    mov eax, dword ptr [s_count]
    call put_kv_dec
    mov esi, s_marker_msg
    mov eax, dword ptr [s_seen]
    call put_kv_hex
    mov esi, s_eip1_msg
    mov eax, dword ptr [s_eip]
    sub eax, s1_after
    call put_kv_hex

# ---- 2. sti; mov ss, eax; mov esp, ebx ------------------------------------------------------
    mov dword ptr [s_count], 0
    mov dword ptr [s_eip], 0xffffffff
    call s_raise_irq4
    mov eax, ss
    mov ebx, esp
s2_sti:
    sti
s2_movss:
    mov ss, eax
s2_movesp:
    mov esp, ebx
s2_after:
    nop
    nop
    cli
    call s_quiet_uart
    mov esi, s_count2_msg
    mov eax, dword ptr [s_count]
    call put_kv_dec
    mov esi, s_eip2_msg
    mov eax, dword ptr [s_eip]
    sub eax, s2_movesp
    call put_kv_hex

# ---- 3. TF over mov ss, eax; mov esp, ebx ---------------------------------------------------
    mov eax, ss
    mov ebx, esp
    pushfd
    or dword ptr [esp], 0x100           # TF
    popfd                               # the trap comes after the instruction after this one
s3_movss:
    mov ss, eax                         # its shadow suppresses the single-step trap ...
s3_movesp:
    mov esp, ebx                        # ... which is taken after this one
s3_after:
    nop
    nop
    mov esi, s_db_count_msg
    mov eax, dword ptr [s_db_count]
    call put_kv_dec
    mov esi, s_db_eip_msg
    mov eax, dword ptr [s_db_eip]
    sub eax, s3_after
    call put_kv_hex
    mov al, 0
    ret

# Wait until the transmitter is empty, then enable its interrupt: IRQ4 rises at once. With IF=0
# it stays pending in the PIC. Returns EAX = IRQ4's bit of the master's IRR (OCW3 0x0a).
s_raise_irq4:
    push edx
s_raise_wait:
    mov dx, COM1_LSR
    in al, dx
    test al, 0x20
    jz s_raise_wait
    mov dx, COM1_IER
    mov al, 0x02                        # IER.THRI
    out dx, al
    mov al, 0x0a
    out 0x20, al
    in al, 0x20
    movzx eax, al
    and eax, 0x10                       # IRQ4's bit only: a BIOS-rate IRQ0 edge may be latched too
    pop edx
    ret

# IER = 0 (IRQ4 low), mask IRQ4, read IIR, acknowledge anything still in service.
s_quiet_uart:
    push eax
    push edx
    mov dx, COM1_IER
    mov al, 0
    out dx, al
    mov dx, COM1_IIR
    in al, dx
    pop edx
    pop eax
    ret

s_irq4:
    push eax
    push edx
    mov eax, dword ptr [s_marker]
    mov dword ptr [s_seen], eax
    mov eax, dword ptr [esp + 8]        # frame EIP
    mov dword ptr [s_eip], eax
    inc dword ptr [s_count]
    mov dx, COM1_IER                    # IER = 0: the line goes low
    mov al, 0
    out dx, al
    mov dx, COM1_IIR
    in al, dx
    mov al, 0x20                        # non-specific EOI
    out 0x20, al
    pop edx
    pop eax
    iretd

s_debug:
    push eax
    inc dword ptr [s_db_count]
    mov eax, dword ptr [esp + 4]        # frame EIP
    mov dword ptr [s_db_eip], eax
    and dword ptr [esp + 12], 0xfffffeff   # TF off in the frame's EFLAGS
    pop eax
    iretd

s_spurious:
    iretd

s_marker:     .long 0
s_seen:       .long 0xffffffff
s_eip:        .long 0xffffffff
s_count:      .long 0
s_irr:        .long 0
s_db_count:   .long 0
s_db_eip:     .long 0xffffffff
s_name:       .asciz "stishadow\n"
s_irr_msg:    .asciz "PIC IRR bit 4 with IRQ4 raised, IF=0: "
s_count_msg:  .asciz "sti; mov [marker], 1: IRQ4 handler runs: "
s_marker_msg: .asciz "sti; mov [marker], 1: marker seen by the handler: "
s_eip1_msg:   .asciz "sti; mov [marker], 1: frame EIP - after the mov: "
s_count2_msg: .asciz "sti; mov ss; mov esp: IRQ4 handler runs: "
s_eip2_msg:   .asciz "sti; mov ss; mov esp: frame EIP - the mov esp: "
s_db_count_msg: .asciz "TF over mov ss; mov esp: #DB traps: "
s_db_eip_msg: .asciz "TF over mov ss; mov esp: #DB frame EIP - after the mov esp: "

.include "runtime.S"
