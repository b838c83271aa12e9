# paging_tasks.S - a preemptive two-task kernel: the timer switches stacks and address spaces.
#
# Two ring-0 tasks, A and B, each with its own kernel stack and its own page directory (A at
# 0x200000, B at 0x203000). The directories share the page table 0x201000 that identity-maps
# 0-4 MiB (kernel, stacks, console), and map virtual 0x400000 to a private frame: 0x300000 for A
# (seed 0xaaaa0000), 0x301000 for B (seed 0xbbbb0000). The PIT runs at ~10 kHz (mode 2, divisor
# 0x77) through the PIC (remapped, only IRQ0 unmasked); each IRQ0 saves the running task's
# registers on its stack (pushad over the CPU's frame), loads the other task's CR3 and stack
# pointer, and returns into it with popad; iretd.
# Where the ticks fall depends on the host (QEMU runs its PIT on wall time), so nothing printed
# may depend on it. The tasks take turns on a shared `turn` word: a task whose turn it is not
# waits in `sti; hlt` until a tick switches away; on its turn it bumps a counter in its private
# page, mixes 0x20000 numbers into its seed (long enough that ticks preempt it many times, and
# the other task runs with its own CR3 in the middle), and prints one line through the shared
# console routine, then hands the turn over. Only the task holding the turn prints, and each
# line holds only what the task computed in its own space: the CR3 it runs on, its seed and
# counter read at 0x400000, the mix, and whether ESP lies in its own stack. Three turns each, A
# first; then B reads both private frames through the shared identity map and exits.
# The tasks run with IF=0 except at `sti; hlt` and at one `sti; nop; cli` every 0x400 mixing
# steps, so a tick is taken only there. (hvsim counts instructions per translated block, or
# exactly with count=; the two agree on where an interrupt lands, and on the exits before it,
# only where a block ends, and tests/vmm/test_counting.py holds them to that. So each sti is a
# block of its own, after a jump, as is the one instruction in its shadow: a tick that falls
# due inside the work waits, in both modes, for the next sti.)
# A monitor must get this right because here CR3 changes inside an interrupt handler, at
# instructions chosen by the timer: each space's translations (and, under shadow paging, each
# space's shadow) must follow CR3 exactly, and a task preempted in the middle of its loop must
# come back with its registers and its own page at 0x400000.

PD_A = 0x200000
PD_B = 0x203000
PIT_DIVISOR = 0x77                      # 1193182 Hz / 119 = ~10 kHz
TURNS = 3
MIX_LOOPS = 0x20000
FRAME = 0x2c                            # pushad (8 dwords) over EIP, CS, EFLAGS

main:
    mov esi, k_name
    call puts
    mov al, 0xfe                        # master mask: only IRQ0
    call pic_remap
    mov eax, 0x20
    mov ebx, k_irq0
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x27                       # the master's spurious IRQ7: no EOI
    mov ebx, k_spurious
    call idt_set_gate
    call idt_load

    mov edi, 0x200000                   # two directories and three page tables, all zero
    mov ecx, 0x1400
    xor eax, eax
    rep stosd
    mov edi, 0x201000
    mov eax, 0x3
    mov ecx, 0x400
k_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz k_fill
    mov dword ptr [0x200000], 0x201003  # A: shared PDE 0, private PDE 1
    mov dword ptr [0x200004], 0x202003
    mov dword ptr [0x202000], 0x300003
    mov dword ptr [0x203000], 0x201003  # B: shared PDE 0, private PDE 1
    mov dword ptr [0x203004], 0x204003
    mov dword ptr [0x204000], 0x301003
    mov dword ptr [0x300000], 0xaaaa0000
    mov dword ptr [0x300004], 0
    mov dword ptr [0x301000], 0xbbbb0000
    mov dword ptr [0x301004], 0

    # Each task starts as if a tick had interrupted it at its entry point (with IF=0).
    mov edi, k_stack_a_top - FRAME
    mov ebx, k_task_a
    call k_new_frame
    mov dword ptr [k_esp], edi
    mov edi, k_stack_b_top - FRAME
    mov ebx, k_task_b
    call k_new_frame
    mov dword ptr [k_esp + 4], edi

    mov al, 0x34                        # channel 0, lobyte/hibyte, mode 2, binary
    out 0x43, al
    mov al, PIT_DIVISOR & 0xff
    out 0x40, al
    mov al, PIT_DIVISOR >> 8
    out 0x40, al

    mov eax, PD_A
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esp, dword ptr [k_esp]          # into task A (k_current = 0)
    popad
    iretd

# EDI = the frame's lowest address, EBX = entry point: zero registers, EIP, CS 0x08, EFLAGS IF=0.
k_new_frame:
    push edi
    xor eax, eax
    mov ecx, 8
    rep stosd
    mov dword ptr [edi], ebx
    mov dword ptr [edi + 4], SEL_KCODE
    mov dword ptr [edi + 8], 0x2
    pop edi
    ret

# IRQ0: acknowledge, then switch to the other task's stack and address space.
k_irq0:
    pushad
    mov al, 0x20                        # OCW2: non-specific EOI
    out 0x20, al
    mov eax, dword ptr [k_current]
    mov dword ptr [k_esp + eax * 4], esp
    xor eax, 1
    mov dword ptr [k_current], eax
    mov ebx, dword ptr [k_cr3 + eax * 4]
    mov cr3, ebx
    mov esp, dword ptr [k_esp + eax * 4]
    popad
    iretd
k_spurious:
    iretd

k_task_a:
    xor ebx, ebx
    jmp k_task
k_task_b:
    mov ebx, 1
# EBX = this task's number. TURNS times: wait for the turn, work, print, pass the turn on.
k_task:
    xor edi, edi                        # turns taken
k_wait:
    cmp dword ptr [k_turn], ebx
    je k_go
    sti
    hlt                                 # (in sti's shadow: a tick cannot slip in before it)
    cli
    jmp k_wait
k_go:
    inc dword ptr [0x400004]            # this space's counter
    mov eax, dword ptr [0x400000]
    add eax, dword ptr [0x400004]
    mov ecx, MIX_LOOPS
k_mix:
    rol eax, 5
    xor eax, ecx
    add eax, 0x9e3779b9
    dec ecx
    jz k_mixed
    test ecx, 0x3ff
    jnz k_mix
    sti                                 # every 0x400 steps: where a tick may preempt
    nop
    cli
    jmp k_mix
k_mixed:
    call k_print_turn
    inc edi
    mov eax, ebx
    xor eax, 1
    mov dword ptr [k_turn], eax
    cmp edi, TURNS
    jb k_wait
    test ebx, ebx
    jnz k_finish
k_idle:
    sti
    hlt
    cli
    jmp k_idle
k_finish:                               # B's last turn comes after A's last
    mov esi, k_done_a
    mov eax, dword ptr [0x300004]
    call put_kv_dec
    mov esi, k_done_b
    mov eax, dword ptr [0x301004]
    call put_kv_dec
    mov al, 0
    jmp exit

# The shared console routine: EBX = task, EDI = turn, EAX = mix.
k_print_turn:
    pushad
    mov edx, eax
    mov esi, k_task_msg
    call puts
    mov al, 65                          # 'A' + task
    add al, bl
    call putc
    mov esi, k_turn_msg
    mov eax, edi
    call puts
    call putdec
    mov esi, k_cr3_msg
    mov eax, cr3
    call puts
    call puthex32
    mov esi, k_seed_msg
    mov eax, dword ptr [0x400000]
    call puts
    call puthex32
    mov esi, k_count_msg
    mov eax, dword ptr [0x400004]
    call puts
    call putdec
    mov esi, k_mix_msg
    mov eax, edx
    call puts
    call puthex32
    mov esi, k_stack_msg
    call puts
    mov esi, k_no
    cmp esp, dword ptr [k_stack_lo + ebx * 4]
    jb k_print_stack
    cmp esp, dword ptr [k_stack_hi + ebx * 4]
    jae k_print_stack
    mov esi, k_yes
k_print_stack:
    call puts
    popad
    ret

.balign 4, 0
k_current:   .long 0
k_turn:      .long 0
k_esp:       .long 0, 0
k_cr3:       .long PD_A, PD_B
k_stack_lo:  .long k_stack_a, k_stack_b
k_stack_hi:  .long k_stack_a_top, k_stack_b_top
k_name:      .asciz "paging_tasks\n"
k_task_msg:  .asciz "task "
k_turn_msg:  .asciz " turn "
k_cr3_msg:   .asciz ": cr3 "
k_seed_msg:  .asciz ", [0x400000] "
k_count_msg: .asciz ", count "
k_mix_msg:   .asciz ", mix "
k_stack_msg: .asciz ", on its own stack: "
k_yes:       .asciz "yes\n"
k_no:        .asciz "NO\n"
k_done_a:    .asciz "both done; A's frame 0x300004 counts "
k_done_b:    .asciz "B's frame 0x301004 counts "
.balign 16, 0
k_stack_a:
    .fill 4096, 1, 0
k_stack_a_top:
k_stack_b:
    .fill 4096, 1, 0
k_stack_b_top:

.include "runtime.S"
