# ioapic_pit.S - the PIT's interrupt routed through the I/O APIC instead of the 8259A.
#
# On a PC with APICs, each ISA interrupt line also reaches an input ("GSI") of the I/O APIC, which
# turns it into a message to a local APIC: vector, trigger mode and destination come from a
# 64-bit redirection entry per input. The board wires ISA IRQ 0 (the PIT) to input 2 - QEMU's
# MADT says so with an interrupt source override, as every PC's does. This kernel masks both
# 8259As, enables its local APIC, programs redirection entry 2 (vector 0x31, edge, fixed, to
# APIC 0), runs the PIT at 100 Hz and sleeps in `hlt`. Each tick is acknowledged with an EOI to
# the local APIC (edge-triggered: the I/O APIC needs none). After 5 ticks it prints the tick and
# wakeup counts, the I/O APIC's ID, version and arbitration registers, entry 2 read back (the
# delivery-status bit is idle), an out-of-range register (index 0x40), which reads as QEMU's
# I/O APIC answers it, and the register-select register itself.

TICKS = 5
APIC = 0xfee00000
IOAPIC = 0xfec00000
VECTOR = 0x31
PIT_DIVISOR = 11932                     # 1193182 Hz / 100

main:
    mov esi, i_name
    call puts
    mov al, 0xff                        # both PICs fully masked: the I/O APIC alone routes
    call pic_remap
    mov al, 0xff
    out 0xa1, al

    mov eax, VECTOR
    mov ebx, i_tick
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0xff
    mov ebx, i_spurious
    call idt_set_gate
    call idt_load

    mov dword ptr [APIC + 0xf0], 0x1ff      # local APIC on, spurious vector 0xff
    mov dword ptr [IOAPIC], 0x15            # entry 2, high half: destination APIC 0
    mov dword ptr [IOAPIC + 0x10], 0
    mov dword ptr [IOAPIC], 0x14            # entry 2, low half: vector, fixed, edge, unmasked
    mov dword ptr [IOAPIC + 0x10], VECTOR

    mov al, 0x34                            # PIT channel 0, mode 2, 100 Hz
    out 0x43, al
    mov al, PIT_DIVISOR & 0xff
    out 0x40, al
    mov al, PIT_DIVISOR >> 8
    out 0x40, al

    sti
i_idle:
    hlt
    inc dword ptr [i_wakeups]
    cmp dword ptr [i_ticks], TICKS
    jb i_idle
    cli

    mov esi, i_ticks_msg
    mov eax, dword ptr [i_ticks]
    call put_kv_dec
    mov esi, i_wake_msg
    mov eax, dword ptr [i_wakeups]
    call put_kv_dec
    mov ebx, 0
    mov esi, i_id_msg
    call i_show
    mov ebx, 1
    mov esi, i_ver_msg
    call i_show
    mov ebx, 2
    mov esi, i_arb_msg
    call i_show
    mov ebx, 0x14
    mov esi, i_entry_msg
    call i_show
    mov ebx, 0x15
    mov esi, i_entry_hi_msg
    call i_show
    mov ebx, 0x40
    mov esi, i_bad_msg
    call i_show
    mov esi, i_sel_msg
    mov eax, dword ptr [IOAPIC]
    call put_kv_hex
    mov al, 0
    ret

i_show:                                 # print label ESI and I/O APIC register EBX
    mov dword ptr [IOAPIC], ebx
    mov eax, dword ptr [IOAPIC + 0x10]
    jmp put_kv_hex

i_tick:
    push eax
    mov dword ptr [APIC + 0xb0], 0          # EOI to the local APIC
    inc dword ptr [i_ticks]
    pop eax
    iretd

i_spurious:
    iretd

i_ticks:        .long 0
i_wakeups:      .long 0
i_name:         .asciz "ioapic pit\n"
i_ticks_msg:    .asciz "ticks: "
i_wake_msg:     .asciz "hlt wakeups: "
i_id_msg:       .asciz "IOAPIC ID: "
i_ver_msg:      .asciz "IOAPIC version: "
i_arb_msg:      .asciz "IOAPIC arbitration: "
i_entry_msg:    .asciz "entry 2 low: "
i_entry_hi_msg: .asciz "entry 2 high: "
i_bad_msg:      .asciz "register 0x40: "
i_sel_msg:      .asciz "IOREGSEL: "

.include "runtime.S"
