# testdev.S - QEMU's pc-testdev as kvm-unit-tests use it (needs -device pc-testdev).
#
# The 4-byte latch at 0xe0: a dword written and read back, bytes and words read at aligned
# offsets, a misaligned inw 0xe1 / inl 0xe2 / inw 0xe3 refused (0), a byte written at
# 0xe3, a misaligned outw 0xe1 dropped. The same latch through the byte-wide window at
# 0xe8. The flush-page port 0xe4 takes a dword and reads 0, the IRQ port 0x2000 reads 0.
# IRQ lines: with the PIC remapped and every line masked, a 1 written to 0x2003 raises ISA
# IRQ3 (IRR bit 3), a 0 lowers it (the edge stays latched in IRR), a word written to 0x2005
# is refused (IRR bit 5 stays clear). The 64 KiB iomem window at 0xff000000: zero at first,
# a dword store read back, a misaligned dword load (the CPU splits it into two aligned
# loads), a misaligned store (split into bytes), rep movsb of a string into it and back,
# and the last dword of the window.

main:
    mov esi, t_name
    call puts
    mov dx, 0xe0
    mov eax, 0x11223344
    out dx, eax
    in eax, dx
    mov esi, t_latch
    call put_kv_hex
    mov dx, 0xe1
    in al, dx
    movzx eax, al
    mov esi, t_inb_e1
    call put_kv_hex
    mov dx, 0xe2
    in ax, dx
    movzx eax, ax
    mov esi, t_inw_e2
    call put_kv_hex
    mov dx, 0xe1
    in ax, dx
    movzx eax, ax
    mov esi, t_inw_e1
    call put_kv_hex
    mov dx, 0xe2
    in eax, dx
    mov esi, t_inl_e2
    call put_kv_hex
    mov dx, 0xe3
    in ax, dx
    movzx eax, ax
    mov esi, t_inw_e3
    call put_kv_hex
    mov dx, 0xe3
    mov al, 0x55
    out dx, al
    mov dx, 0xe1
    mov ax, 0x6677
    out dx, ax
    mov dx, 0xe0
    in eax, dx
    mov esi, t_after_writes
    call put_kv_hex
    mov dx, 0xe8
    in eax, dx
    mov esi, t_inl_e8
    call put_kv_hex
    mov dx, 0xea
    in ax, dx
    movzx eax, ax
    mov esi, t_inw_ea
    call put_kv_hex
    mov dx, 0xe9
    in ax, dx
    movzx eax, ax
    mov esi, t_inw_e9
    call put_kv_hex
    mov dx, 0xe8
    mov al, 0x99
    out dx, al
    mov dx, 0xe0
    in eax, dx
    mov esi, t_after_e8
    call put_kv_hex
    mov dx, 0xe4
    mov eax, 0x00100000
    out dx, eax
    in eax, dx
    mov esi, t_flush
    call put_kv_hex
    mov dx, 0x2000
    in al, dx
    movzx eax, al
    mov esi, t_irq_read
    call put_kv_hex

    mov al, 0xff                        # every master line masked
    call pic_remap
    mov al, 0x0a                        # OCW3: reads of 0x20 give the IRR
    out 0x20, al
    in al, 0x20
    movzx eax, al
    mov esi, t_irr_before
    call put_kv_hex
    mov dx, 0x2003
    mov al, 1
    out dx, al
    in al, 0x20
    movzx eax, al
    mov esi, t_irr_raised
    call put_kv_hex
    mov dx, 0x2003
    mov al, 0
    out dx, al
    in al, 0x20
    movzx eax, al
    mov esi, t_irr_lowered
    call put_kv_hex
    mov dx, 0x2005
    mov ax, 1
    out dx, ax
    in al, 0x20
    movzx eax, al
    mov esi, t_irr_word
    call put_kv_hex

    mov ebx, 0xff000000
    mov eax, dword ptr [ebx + 0x100]
    mov esi, t_mem_zero
    call put_kv_hex
    mov dword ptr [ebx], 0x11223344
    mov eax, dword ptr [ebx]
    mov esi, t_mem_dword
    call put_kv_hex
    mov eax, dword ptr [ebx + 1]
    mov esi, t_mem_mis_load
    call put_kv_hex
    mov dword ptr [ebx + 5], 0xaabbccdd
    mov eax, dword ptr [ebx + 4]
    mov esi, t_mem_mis_store
    call put_kv_hex
    mov eax, dword ptr [ebx + 8]
    mov esi, t_mem_next
    call put_kv_hex
    mov esi, t_copy
    mov edi, 0xff000200
    mov ecx, 8
    cld
    rep movsb
    mov esi, 0xff000200
    mov edi, t_back
    mov ecx, 8
    rep movsb
    mov esi, t_copied
    call puts
    mov esi, t_back
    call puts
    call putnl
    mov dword ptr [ebx + 0xfffc], 0xcafef00d
    mov eax, dword ptr [ebx + 0xfffc]
    mov esi, t_mem_last
    call put_kv_hex
    mov al, 0
    ret

t_name:          .asciz "testdev\n"
t_latch:         .asciz "outl/inl 0xe0: "
t_inb_e1:        .asciz "inb 0xe1: "
t_inw_e2:        .asciz "inw 0xe2: "
t_inw_e1:        .asciz "inw 0xe1 (misaligned): "
t_inl_e2:        .asciz "inl 0xe2 (misaligned): "
t_inw_e3:        .asciz "inw 0xe3 (misaligned): "
t_after_writes:  .asciz "after outb 0xe3 and a misaligned outw 0xe1: "
t_inl_e8:        .asciz "inl 0xe8: "
t_inw_ea:        .asciz "inw 0xea: "
t_inw_e9:        .asciz "inw 0xe9 (misaligned): "
t_after_e8:      .asciz "after outb 0xe8: "
t_flush:         .asciz "flush page port reads: "
t_irq_read:      .asciz "inb 0x2000: "
t_irr_before:    .asciz "IRR before: "
t_irr_raised:    .asciz "IRR after outb 0x2003, 1: "
t_irr_lowered:   .asciz "IRR after outb 0x2003, 0: "
t_irr_word:      .asciz "IRR after outw 0x2005, 1: "
t_mem_zero:      .asciz "iomem +0x100 at first: "
t_mem_dword:     .asciz "iomem +0 after a dword store: "
t_mem_mis_load:  .asciz "iomem dword at +1: "
t_mem_mis_store: .asciz "iomem +4 after a dword store at +5: "
t_mem_next:      .asciz "iomem +8: "
t_copied:        .asciz "rep movsb there and back: "
t_mem_last:      .asciz "iomem +0xfffc: "
t_copy:          .asciz "pc-test"
t_back:          .fill 9, 1, 0

.include "runtime.S"
