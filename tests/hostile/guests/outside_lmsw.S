# outside_lmsw.S - lmsw whose memory operand is outside RAM.
#
# On the bare machine the word at 0xF0000000 reads as zero (unassigned space): lmsw of 0 clears
# MP, EM and TS, and cannot clear PE. Under trap lmsw faults in ring 1 and the monitor's emulator
# read the operand from guest memory itself, raising on the address outside RAM.

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov eax, cr0
    or eax, 0xe                                 # MP, EM, TS
    mov cr0, eax
    mov esi, o_lmsw
    call puts
    mov eax, 0xf0000000
    lmsw word ptr [eax]
    mov eax, cr0
    mov esi, o_cr0
    call put_kv_hex
    mov al, 0
    ret

o_name: .asciz "outside_lmsw\n"
o_lmsw: .asciz "kernel: cr0 |= MP|EM|TS, then lmsw [0xf0000000]\n"
o_cr0:  .asciz "kernel: cr0 "

.include "hostile.S"
