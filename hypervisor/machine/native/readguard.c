/* readguard.c - the filter in front of trap's read hook over the monitor's memory.
 *
 * Where the monitor's pages (shadow GDTs, IDT, TSS) must lie inside the guest's 4 GiB (no C
 * TLB fill: see techniques/trap.py), trap keeps them out of the guest's reach with a
 * UC_HOOK_MEM_READ over them. Most reads there are the CPU's own: a segment load reads its
 * descriptor from the shadow GDT. Calling Python for each (~3-5 µs with the trampoline) made
 * them most of the cost of an exit. This callback lets the CPU's own reads through in C and
 * calls the Python hook for the rest, which may be a guest instruction's operand:
 *   - while ``open`` is set: the monitor itself is loading segment registers;
 *   - a read of the shadow descriptor tables by the guest's own iret or retf (the kernel's return to user
 *     code, which the kernel's shadow GDT makes fault): the instruction at CS:EIP is an
 *     iret/retf and the read is not of its frame on the stack. Both end their translated
 *     block, so where EIP names one it is the instruction reading (Unicorn may leave EIP
 *     at an earlier instruction of the block for a helper's reads, never at a later one).
 * Linear addresses are physical here: the real CPU runs with paging off under trap.
 * Unicorn's functions come as pointers, so nothing links against the library.
 */
#include <stdint.h>

typedef void uc_engine;
typedef int (*reg_read_fn)(uc_engine *, int, void *);
typedef int (*mem_read_fn)(uc_engine *, uint64_t, void *, uint64_t);
typedef void (*read_hook_fn)(uc_engine *, int, uint64_t, int, int64_t, void *);

struct guard {                   /* _Guard in readguard.py, field for field */
    int32_t open;                /* the monitor is loading segments: every read is its own */
    int32_t eip_regid;           /* UC_X86_REG_EIP */
    reg_read_fn reg_read;        /* uc_reg_read */
    read_hook_fn python;         /* the monitor's hook, for every other read */
    mem_read_fn mem_read;        /* uc_mem_read */
    const uint64_t *cs_base;     /* env->segs[R_CS].base */
    const uint64_t *ss_base;     /* env->segs[R_SS].base */
    const uint64_t *esp;         /* env->regs[R_ESP] */
    uint64_t tables, tables_end; /* the shadow descriptor tables: [tables, tables_end) */
    uint64_t calls;              /* reads handed to Python (for tests) */
};

/* The frame an iret or retf at CS:EIP pops, as [from, to) linear; 0 if it is neither. */
static int return_frame(struct guard *g, uc_engine *uc, uint64_t eip, uint64_t *from, uint64_t *to)
{
    uint8_t code[4];
    unsigned at = 0, pops;

    if (g->mem_read(uc, (*g->cs_base + eip) & 0xffffffffu, code, sizeof code) != 0)
        return 0;
    while (at < 2 && (code[at] == 0x66 || code[at] == 0x67))
        at++;
    if (code[at] == 0xcf)                     /* iret: EIP, CS, EFLAGS, ESP, SS */
        pops = 5 * 4;
    else if (code[at] == 0xcb)                /* retf: EIP, CS, ESP, SS */
        pops = 4 * 4;
    else if (code[at] == 0xca)                /* retf imm16: and the released bytes */
        pops = 4 * 4 + (code[at + 1] | code[at + 2] << 8);
    else
        return 0;
    *from = (*g->ss_base + (*g->esp & 0xffffffffu)) & 0xffffffffu;
    *to = *from + pops;
    return 1;
}

void hv_readguard(uc_engine *uc, int type, uint64_t address, int size, int64_t value, void *user)
{
    struct guard *g = user;
    uint64_t eip = 0, from, to;

    if (g->open)
        return;
    if (g->reg_read(uc, g->eip_regid, &eip) == 0) {
        eip &= 0xffffffffu;
        if (address >= g->tables && address + size <= g->tables_end
            && return_frame(g, uc, eip, &from, &to) && (address + size <= from || address >= to))
            return;
    }
    g->calls++;
    g->python(uc, type, address, size, value, 0);
}
