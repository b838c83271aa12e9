# shortwindow.S - an interrupt pending while IF=0 is taken in the shortest window that allows it.
#
# Kernels open interrupt windows of one or two instructions (`sti; nop; cli` in an idle or
# polling loop, Linux's local_irq_enable(); local_irq_disable() pairs). The CPU checks for a
# pending maskable interrupt at every instruction boundary where IF=1 and no shadow holds, so
# the window must deliver it. The kernel raises IRQ4 with IF=0 (COM1 with IER.THRI while the
# transmitter is empty: no timing involved; only IRQ4 unmasked) and then opens two windows:
#   1. `sti; cli`: the cli sits in sti's shadow, so the window has no boundary where an
#      interrupt may be taken: the handler does not run, and IRQ4 stays pending in the IRR.
#      (Only IRQ4's IRR bit is printed: the BIOS left the PIT ticking at 18.2 Hz, and on a slow
#      host a masked IRQ0 edge may be latched in the IRR too.)
#   2. `sti; nop; cli`: the interrupt is taken after the nop, before the cli (the frame's EIP
#      is the cli's address), and the IRR bit is gone after the handler's EOI.
# The handler records its frame EIP and silences the UART (IER = 0) before its EOI; nothing is
# printed while IER has THRI set, since the console is this same UART.

COM1_IER = 0x3f9
COM1_IIR = 0x3fa
COM1_LSR = 0x3fd

main:
    mov esi, w_name
    call puts
    mov al, 0xef                        # master mask: only IRQ4 (COM1)
    call pic_remap
    mov eax, 0x24
    mov ebx, w_irq4
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x27
    mov ebx, w_spurious
    call idt_set_gate
    call idt_load

    mov dx, COM1_LSR                    # transmitter empty ...
w_wait_thre:
    in al, dx
    test al, 0x20
    jz w_wait_thre
    mov dx, COM1_IER                    # ... so IER.THRI raises IRQ4 now
    mov al, 0x02
    out dx, al

# ---- 1. sti; cli: no boundary outside the shadow ---------------------------------------------
    sti
    cli
    mov eax, dword ptr [w_count]
    mov dword ptr [w_count1], eax
    mov al, 0x0a                        # OCW3: read the IRR
    out 0x20, al
    in al, 0x20
    movzx eax, al
    and eax, 0x10                       # IRQ4's bit only: a BIOS-rate IRQ0 edge may be latched too
    mov dword ptr [w_irr1], eax

# ---- 2. sti; nop; cli -------------------------------------------------------------------------
    sti
    nop
w_cli:
    cli
    in al, 0x20
    movzx eax, al
    and eax, 0x10
    mov dword ptr [w_irr2], eax

    mov dx, COM1_IER                    # quiet the UART before printing, whatever happened
    mov al, 0
    out dx, al
    mov dx, COM1_IIR
    in al, dx

    mov esi, w_count1_msg
    mov eax, dword ptr [w_count1]
    call put_kv_dec
    mov esi, w_irr1_msg
    mov eax, dword ptr [w_irr1]
    call put_kv_hex
    mov esi, w_count2_msg
    mov eax, dword ptr [w_count]
    sub eax, dword ptr [w_count1]
    call put_kv_dec
    mov esi, w_eip_msg
    mov eax, dword ptr [w_eip]
    sub eax, w_cli
    call put_kv_hex
    mov esi, w_irr2_msg
    mov eax, dword ptr [w_irr2]
    call put_kv_hex
    mov al, 0
    ret

w_irq4:
    push eax
    push edx
    mov eax, dword ptr [esp + 8]        # frame EIP
    mov dword ptr [w_eip], eax
    inc dword ptr [w_count]
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

w_spurious:
    iretd

w_count:      .long 0
w_count1:     .long 0
w_eip:        .long 0xffffffff
w_irr1:       .long 0
w_irr2:       .long 0
w_name:       .asciz "shortwindow\n"
w_count1_msg: .asciz "sti; cli: IRQ4 handler runs: "
w_irr1_msg:   .asciz "sti; cli: PIC IRR bit 4 after the window: "
w_count2_msg: .asciz "sti; nop; cli: IRQ4 handler runs: "
w_eip_msg:    .asciz "sti; nop; cli: frame EIP - the cli: "
w_irr2_msg:   .asciz "sti; nop; cli: PIC IRR bit 4 after the window: "

.include "runtime.S"
