# portedges.S - port accesses that run past the end of a device's ports, as QEMU answers them.
#
# QEMU hands a port access whole to the device decoding its first port, which applies its
# own size and alignment rules. fw_cfg: after selecting the signature, inl 0x510 and
# inw 0x511 are refused (read 0) and consume no data (the next byte is still Q), outl 0x510
# selects nothing, inl 0x51a and inw 0x51b (misaligned in the DMA window) read 0. The PM
# timer: inl 0x60a and inw 0x60b are misaligned and read 0.

main:
    mov esi, e_name
    call puts
    mov dx, 0x510
    mov ax, 0
    out dx, ax
    in eax, dx
    mov esi, e_inl_510
    call put_kv_hex
    mov dx, 0x511
    in ax, dx
    movzx eax, ax
    mov esi, e_inw_511
    call put_kv_hex
    mov dx, 0x510
    mov eax, 1
    out dx, eax
    mov dx, 0x511
    in al, dx
    movzx eax, al
    mov esi, e_next
    call put_kv_hex
    mov dx, 0x51a
    in eax, dx
    mov esi, e_inl_51a
    call put_kv_hex
    mov dx, 0x51b
    in ax, dx
    movzx eax, ax
    mov esi, e_inw_51b
    call put_kv_hex
    mov dx, 0x60a
    in eax, dx
    mov esi, e_inl_60a
    call put_kv_hex
    mov dx, 0x60b
    in ax, dx
    movzx eax, ax
    mov esi, e_inw_60b
    call put_kv_hex
    mov al, 0
    ret

e_name:    .asciz "portedges\n"
e_inl_510: .asciz "inl 0x510: "
e_inw_511: .asciz "inw 0x511: "
e_next:    .asciz "after outl 0x510, 1 the next data byte: "
e_inl_51a: .asciz "inl 0x51a: "
e_inw_51b: .asciz "inw 0x51b: "
e_inl_60a: .asciz "inl 0x60a: "
e_inw_60b: .asciz "inw 0x60b: "

.include "runtime.S"
