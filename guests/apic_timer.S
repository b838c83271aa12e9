# apic_timer.S - the local APIC's own timer, in periodic mode, with the PIC masked.
#
# Since the Pentium every x86 core has a local APIC between its interrupt pins and the world. Its
# timer counts down from an initial count at the bus clock (divided as the divide register says)
# and, in periodic mode, reloads and interrupts again each time it reaches zero. Unlike the PIT it
# needs no PIC: this kernel masks both 8259As, turns the APIC on through the spurious-vector
# register, points the timer's LVT entry at vector 0x30 in periodic mode and sleeps in `hlt`.
# Each interrupt bumps a counter and ends with a write to the EOI register; after 5 ticks the
# kernel prints what it saw. Nothing printed depends on time: the tick count, how many times hlt
# returned, the registers read back, and the in-service bit of vector 0x30 inside the first
# handler (set) and after its EOI (clear).

TICKS = 5
APIC = 0xfee00000
VECTOR = 0x30
INITIAL_COUNT = 1000000

main:
    mov esi, a_name
    call puts
    mov al, 0xff                        # both PICs fully masked: the APIC alone interrupts
    call pic_remap
    mov al, 0xff
    out 0xa1, al

    mov eax, VECTOR
    mov ebx, a_tick
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0xff                       # the APIC's spurious vector
    mov ebx, a_spurious
    call idt_set_gate
    call idt_load

    mov dword ptr [APIC + 0xf0], 0x1ff          # SVR: APIC software-enabled, spurious vector 0xff
    mov dword ptr [APIC + 0x3e0], 0xb           # divide by 1
    mov dword ptr [APIC + 0x320], 0x20030       # LVT timer: periodic, vector 0x30, unmasked
    mov dword ptr [APIC + 0x380], INITIAL_COUNT # start counting

    sti
a_idle:
    hlt
    inc dword ptr [a_wakeups]
    cmp dword ptr [a_ticks], TICKS
    jb a_idle
    cli
    mov dword ptr [APIC + 0x320], 0x10030       # mask the timer: the run ends quietly

    mov esi, a_ticks_msg
    mov eax, dword ptr [a_ticks]
    call put_kv_dec
    mov esi, a_wake_msg
    mov eax, dword ptr [a_wakeups]
    call put_kv_dec
    mov esi, a_version_msg
    mov eax, dword ptr [APIC + 0x30]
    call put_kv_hex
    mov esi, a_lvt_msg
    mov eax, dword ptr [APIC + 0x320]
    call put_kv_hex
    mov esi, a_initial_msg
    mov eax, dword ptr [APIC + 0x380]
    call put_kv_hex
    mov esi, a_divide_msg
    mov eax, dword ptr [APIC + 0x3e0]
    call put_kv_hex
    mov esi, a_svr_msg
    mov eax, dword ptr [APIC + 0xf0]
    call put_kv_hex
    mov esi, a_isr_msg
    mov eax, dword ptr [a_isr_in]
    call put_kv_hex
    mov esi, a_isr2_msg
    mov eax, dword ptr [a_isr_after]
    call put_kv_hex
    mov esi, a_ppr_msg
    mov eax, dword ptr [a_ppr_in]
    call put_kv_hex
    mov al, 0
    ret

a_tick:
    push eax
    cmp dword ptr [a_ticks], 0
    jne a_tick_eoi
    mov eax, dword ptr [APIC + 0x110]           # ISR bits 32-63: vector 0x30 is bit 16
    mov dword ptr [a_isr_in], eax
    mov eax, dword ptr [APIC + 0xa0]            # PPR while 0x30 is in service
    mov dword ptr [a_ppr_in], eax
a_tick_eoi:
    mov dword ptr [APIC + 0xb0], 0              # EOI
    cmp dword ptr [a_ticks], 0
    jne a_tick_done
    mov eax, dword ptr [APIC + 0x110]
    mov dword ptr [a_isr_after], eax
a_tick_done:
    inc dword ptr [a_ticks]
    pop eax
    iretd

a_spurious:
    iretd

a_ticks:       .long 0
a_wakeups:     .long 0
a_isr_in:      .long 0xffffffff
a_isr_after:   .long 0xffffffff
a_ppr_in:      .long 0xffffffff
a_name:        .asciz "apic timer\n"
a_ticks_msg:   .asciz "ticks: "
a_wake_msg:    .asciz "hlt wakeups: "
a_version_msg: .asciz "APIC version: "
a_lvt_msg:     .asciz "LVT timer: "
a_initial_msg: .asciz "initial count: "
a_divide_msg:  .asciz "divide: "
a_svr_msg:     .asciz "SVR: "
a_isr_msg:     .asciz "ISR[32-63] in first tick: "
a_isr2_msg:    .asciz "ISR[32-63] after EOI: "
a_ppr_msg:     .asciz "PPR in first tick: "

.include "runtime.S"
