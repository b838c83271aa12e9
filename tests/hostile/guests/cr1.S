# cr1.S - the kernel reads and writes CR1, which does not exist.
#
# x86 has CR0, CR2, CR3, CR4 (and CR8 in 64-bit mode); `mov` to or from CR1, CR5, CR6 or CR7 is an
# invalid opcode, #UD, at any privilege level. Under trap the move faults in ring 1 with #GP, and
# the monitor's emulator looked for a virtual CR1, which does not exist, and raised inside the
# monitor. The kernel reports the vector of each attempt and carries on.

main:
    call hv_setup
    mov esi, c_name
    call puts
    mov esi, c_read
    call puts
    mov dword ptr [fault_resume], c_1
    mov eax, 0x12345678
    mov eax, cr1
    mov esi, c_value
    call put_kv_hex
c_1:
    mov esi, c_write
    call puts
    mov dword ptr [fault_resume], c_2
    xor eax, eax
    mov cr1, eax
    mov esi, c_wrote
    call puts
c_2:
    mov al, 0
    ret

c_name:  .asciz "cr1\n"
c_read:  .asciz "kernel: mov eax, cr1\n"
c_value: .asciz "kernel: cr1 reads "
c_write: .asciz "kernel: mov cr1, eax\n"
c_wrote: .asciz "kernel: cr1 written\n"

.include "hostile.S"
