/* blockhook.c - the one UC_HOOK_BLOCK callback: count instructions per block, stop at a
 * deadline, and watch for the interrupt window.
 *
 * Unicorn can count instructions only with emu_start(count=N), which compiles a helper
 * call and an exit check in front of every instruction (about 2x on ordinary code).
 * QEMU already knows how many instructions each translated block holds (tb->icount);
 * Unicorn only does not say so to a block hook, which gets (address, size). So this
 * callback, run once per block before the block's first instruction:
 *
 *   1. stops the CPU, before the block runs, when the count has reached the deadline
 *      (the monitor's timer deadline or --max-instructions): the first block boundary at
 *      or after it, which is deterministic;
 *   2. stops the CPU, before the block runs, when the window watch is armed and IF is 1
 *      (QEMU ends a block after every instruction that can set IF, so this is the
 *      instruction boundary where the hardware would take the interrupt);
 *   3. adds the block's instruction count to the counter and remembers the block, so
 *      that an exit in the middle of it (port I/O, a fault, int n) can be counted as the
 *      blocks before it plus the instructions from the block's start to EIP.
 *
 * The count comes from a small direct-mapped cache keyed by (address, size); a miss asks
 * Unicorn for the block (uc_ctl UC_CTL_TB_REQUEST_CACHE: the translated block QEMU would
 * run at this address in this CPU state, already translated since it is running) and
 * accepts its icount only when its address and size are this block's. Anything else is
 * decoded by the Python side through ``learn`` (a stop would lose QEMU's one-instruction
 * block after self-modifying code); only where that fails does the hook stop the CPU
 * before the block (STOP_UNKNOWN). The cache is wiped whenever QEMU drops a translated
 * block or flushes them all (two of its counters), so rewritten code is counted afresh.
 *
 * Two more stops before a block, for exactness (Cpu.run handles both):
 *   STOP_CROSSING  the run is ``exact`` and the block would cross the deadline;
 *   STOP_IO        the block holds port I/O and runs with CPL > IOPL (``io_guard``): a
 *                  real CPU raises #GP before the I/O, Unicorn would run it;
 *   STOP_ALIGN     the block holds a legacy SSE instruction whose 16-byte memory operand
 *                  must be aligned, and CR4.OSFXSR is set (``cr4_at``): QEMU 7.2 raises #GP
 *                  for a misaligned one, the QEMU 5.0 inside Unicorn does not, so Python
 *                  runs the block up to it and checks its address (``pass_at``: the
 *                  one block start that may run once without this stop, the instruction
 *                  Python found aligned);
 *   STOP_WATCH     the block holds an instruction the monitor watches (``watch``: hvm's
 *                  invlpg, far jmp/call, iret), which Python runs up to and shows the
 *                  monitor, or lets through once (``pass_at``).
 *
 * It is compiled by the package's install step (setup.py) and loaded with ctypes by
 * blockhook.py. It needs no Unicorn header and links against nothing: the library
 * functions it calls arrive as pointers in the record, taken from the libunicorn the
 * Python binding has loaded.
 */
#include <stdint.h>

typedef int (*uc_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*uc_emu_stop_fn)(void *uc);
typedef int (*uc_ctl_fn)(void *uc, int control, ...);

struct uc_tb {            /* unicorn.h's uc_tb */
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
};

#define CACHE_SIZE 4096   /* a power of two; must match blockhook.py */

struct entry {
    uint64_t address;
    uint32_t size;        /* 0: empty */
    uint16_t icount;
    uint16_t flags;       /* IO_KNOWN, HAS_IO, ALIGN_KNOWN, HAS_ALIGNED */
};

#define IO_KNOWN 1        /* flags: HAS_IO says whether the block holds in/out/ins/outs */
#define HAS_IO   2
#define ALIGN_KNOWN 4     /* flags: HAS_ALIGNED says whether it holds an SSE op that needs alignment */
#define HAS_ALIGNED 8
#define WATCH_KNOWN 16    /* flags: HAS_WATCHED says whether it holds an instruction the monitor watches */
#define HAS_WATCHED 32
#define HAS_WATCHED_NT 64 /* ... or one it watches only while EFLAGS.NT is set (an iret: a task return) */

enum { STOP_NONE = 0, STOP_DEADLINE = 1, STOP_WINDOW = 2, STOP_UNKNOWN = 3, STOP_CROSSING = 4,
       STOP_IO = 5, STOP_NMI = 6, STOP_ALIGN = 7, STOP_WATCH = 8 };

/* Shared with Python (ctypes.Structure _Record in blockhook.py): keep both in step. */
struct record {
    uint64_t counter;        /* instructions of every block entered since the run began */
    uint64_t deadline;       /* stop at the first block start where counter >= deadline */
    uint64_t block_address;  /* the block entered last: its start (linear), */
    uint32_t block_size;     /*   its size in bytes, */
    uint32_t block_icount;   /*   its instruction count (all already in counter) */
    volatile int32_t counting;  /* 0: emu_start(count=) counts; only the window is watched */
    volatile int32_t stopped;   /* why this hook last stopped the CPU (STOP_*), 0 if it did not */
    volatile int32_t armed;     /* window watch armed by the monitor; cleared when it fires */
    volatile int32_t fired;     /* 1 once the CPU was stopped because IF was 1 */
    uint64_t window_address;    /* the block where the window watch fired */
    uint64_t eflags;            /* EFLAGS read there */
    int32_t eflags_regid;       /* UC_X86_REG_EFLAGS */
    int32_t ctl_request_cache;  /* uc_ctl's code for UC_CTL_TB_REQUEST_CACHE, read-write */
    uc_reg_read_fn reg_read;
    uc_emu_stop_fn emu_stop;
    uc_ctl_fn ctl;
    const volatile uint32_t *eflags_at;  /* QEMU's env->eflags, where IF lives; NULL: ask reg_read */
    uint64_t unknown_address;   /* the block the hook last stopped before (UNKNOWN, CROSSING, IO) */
    uint32_t unknown_size;
    uint32_t misses;            /* cache misses (statistics) */
    int32_t exact;              /* 1: stop before a block that would cross the deadline (CROSSING) */
    int32_t io_guard;           /* stop before a block with port I/O (IO): 1 while CPL > IOPL,
                                 * 2 while CPL >= io_guard_cpl; 0 never */
    const volatile uint32_t *hflags_at;  /* QEMU's env->hflags (CPL in bits 0-1), for io_guard */
    const volatile uint64_t *invalidations_at;  /* tcg_ctx->tb_phys_invalidate_count, or NULL */
    uint64_t invalidations_seen;   /* its value when the cache was last known to be current */
    const volatile uint32_t *flushes_at;  /* tcg_ctx->tb_ctx.tb_flush_count, or NULL */
    uint32_t flushes_seen;
    uint32_t unknown_icount;    /* the icount of the block stopped before (CROSSING, IO) */
    uint32_t unknown_flags;
    /* Python's decoder, called in place of a stop (icount | flags << 16; 0: cannot tell):
     * a stop would lose QEMU's one-instruction block after self-modifying code. */
    uint32_t (*learn)(uint64_t address, uint32_t size);
    /* Unicorn's uc->skip_sync_pc_on_exit (or NULL), and a flag Cpu.cut_block sets in a fault's
     * hook: a hook that writes EIP sets the library's flag, which then stays set until the
     * next emu_start when the write came from a fault's hook, outside any block, and every
     * later I/O hook of the run sees EIP at its block's start. The first block after a fault's
     * hook clears it: no write made inside a block is pending there. */
    volatile uint8_t *skip_sync_at;
    volatile int32_t after_fault;
    volatile int32_t io_guard_cpl;  /* io_guard 2: stop before port I/O at CPL >= this (a
                                     * technique whose IOPL is virtual says where it refuses) */
    int32_t fast;               /* 1: the common case may skip the checks (hv_block): counting, and
                                 * every pointer above that the fast path reads is set */
    volatile int32_t nmi_armed; /* stop at the first block where NMIs are no longer blocked */
    const volatile uint32_t *hflags2_at;  /* QEMU's env->hflags2 (HF2_NMI_MASK), for nmi_armed */
    const volatile uint32_t *cr4_at;  /* QEMU's env->cr[4] (low half), or NULL: no alignment stops */
    uint64_t pass_at;           /* the block start that runs once without STOP_ALIGN or STOP_WATCH; ~0: none */
    int32_t watch;              /* 1: stop before a block with HAS_WATCHED (the monitor's instructions) */
    uint32_t fast_mask;         /* the fast path takes a known block only if its flags & fast_mask ==
                                 * fast_value (watching: known, and nothing watched in it) */
    uint32_t fast_value;
    uint64_t learn_from;        /* blocks at or above this address are counted by ``learn``, never by
                                 * QEMU's icount: code that stands for other code (binary
                                 * translation's cache) counts the guest instructions it performs */
    struct entry cache[CACHE_SIZE];
};

#define EFLAGS_IF (1u << 9)
#define EFLAGS_NT (1u << 14)
#define HF2_NMI_MASK (1u << 2)   /* an NMI's handler runs: NMIs blocked until its iret */
#define EFLAGS_IOPL_SHIFT 12
#define CR4_OSFXSR (1u << 9)

static inline uint32_t slot(uint64_t address, uint32_t size)
{
    return (uint32_t)(((address ^ (address >> 13)) * 0x9E3779B1u) ^ size) & (CACHE_SIZE - 1);
}

static void stop(void *uc, struct record *r, int32_t why)
{
    r->stopped = why;
    r->emu_stop(uc);
}

static void stop_before(void *uc, struct record *r, int32_t why, uint64_t address, uint32_t size,
                        const struct entry *e)
{
    r->unknown_address = address;
    r->unknown_size = size;
    r->unknown_icount = e ? e->icount : 0;
    r->unknown_flags = e ? e->flags : 0;
    stop(uc, r, why);
}

/* Fill ``e`` from Python's decoder; 0 where there is none or it cannot tell. */
static int learn(struct record *r, struct entry *e, uint64_t address, uint32_t size)
{
    uint32_t v;
    if (r->learn == 0 || (v = r->learn(address, size)) == 0)
        return 0;
    e->icount = v & 0xFFFF;
    e->flags = v >> 16;
    return 1;
}

static void wipe(struct record *r)
{
    uint32_t i;
    for (i = 0; i < CACHE_SIZE; i++)
        r->cache[i].size = 0;
}

static inline int io_guarded(const struct record *r)
{
    return r->io_guard == 1 ? (r->hflags_at[0] & 3) > ((*r->eflags_at >> EFLAGS_IOPL_SHIFT) & 3)
         : r->io_guard == 2 ? (int32_t)(r->hflags_at[0] & 3) >= r->io_guard_cpl : 0;
}

static inline int align_guarded(const struct record *r)
{
    return r->cr4_at != 0 && (*r->cr4_at & CR4_OSFXSR);
}

static void hv_block_slow(void *uc, uint64_t address, uint32_t size, struct record *r)
    __attribute__((noinline));

/* uc_cb_hookcode_t: void (*)(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
 *
 * The common case first, in as few instructions as will do (this runs once per translated
 * block, every few guest instructions): counting, no window to open (nothing armed, or IF
 * still 0: a guest that keeps interrupts off while one waits runs here), no fault just taken, the
 * block known, no translated block dropped since, no deadline reached or crossed, no port
 * I/O to refuse, no SSE alignment to check. Then the block is simply added. Anything else takes hv_block_slow, which
 * checks everything in order; where every condition here holds, it does exactly this. */
void hv_block(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct record *r = user_data;
    const struct entry *e = &r->cache[slot(address, size)];
    uint64_t next = r->counter + e->icount;

    if (__builtin_expect(r->fast && !(r->after_fault | r->nmi_armed)
            && !(r->armed && (*r->eflags_at & EFLAGS_IF))
            && e->address == address && e->size == size
            && (r->exact ? next : r->counter + 1) <= r->deadline
            && *r->invalidations_at == r->invalidations_seen
            && *r->flushes_at == r->flushes_seen
            && !io_guarded(r)
            && (!align_guarded(r) || (e->flags & (ALIGN_KNOWN | HAS_ALIGNED)) == ALIGN_KNOWN)
            && (e->flags & r->fast_mask) == r->fast_value, 1)) {
        r->counter = next;
        r->block_address = address;
        r->block_size = size;
        r->block_icount = e->icount;
        return;
    }
    hv_block_slow(uc, address, size, r);
}

static void hv_block_slow(void *uc, uint64_t address, uint32_t size, struct record *r)
{
    struct entry *e;
    int guard, aligned, watched, smc;

    if (r->after_fault) {
        r->after_fault = 0;
        if (r->skip_sync_at != 0)
            *r->skip_sync_at = 0;
    }
    if (r->counting && r->counter >= r->deadline) {
        stop(uc, r, STOP_DEADLINE);          /* nothing of this block has run, nor is counted */
        return;
    }
    if (r->armed) {
        uint64_t eflags = 0;
        if (r->eflags_at != 0)
            eflags = *r->eflags_at;          /* IF is never lazy in QEMU: one load */
        else if (r->reg_read(uc, r->eflags_regid, &eflags) != 0)
            eflags = 0;
        if (eflags & EFLAGS_IF) {
            r->armed = 0;                    /* one shot: the monitor re-arms if another waits */
            r->fired = 1;
            r->window_address = address;
            r->eflags = eflags;
            stop(uc, r, STOP_WINDOW);
            return;
        }
    }
    /* An NMI waits while an earlier one's handler runs: the handler's iret (run by the CPU,
     * which clears HF2_NMI_MASK and ends its block) opens the way at the next block start. */
    if (r->nmi_armed && r->hflags2_at != 0 && !(*r->hflags2_at & HF2_NMI_MASK)) {
        r->nmi_armed = 0;
        stop(uc, r, STOP_NMI);
        return;
    }
    if (!r->counting)
        return;
    /* Every translated block QEMU drops (self-modifying code, ctl_remove_cache) bumps one
     * count, every flush of them all another: a block translated again at the same
     * address may hold other instructions, so the cache starts afresh. */
    smc = r->invalidations_at != 0 && *r->invalidations_at != r->invalidations_seen;
    if (smc || (r->flushes_at != 0 && *r->flushes_at != r->flushes_seen)) {
        if (r->invalidations_at != 0)
            r->invalidations_seen = *r->invalidations_at;
        if (r->flushes_at != 0)
            r->flushes_seen = *r->flushes_at;
        wipe(r);
    }
    guard = io_guarded(r);
    aligned = align_guarded(r) && address != r->pass_at;
    watched = r->watch && address != r->pass_at;
    r->pass_at = ~(uint64_t)0;
    e = &r->cache[slot(address, size)];
    if (e->address != address || e->size != size) {
        struct uc_tb tb;
        r->misses++;
        if (!guard && !aligned && !watched && address < r->learn_from
                && r->ctl(uc, r->ctl_request_cache, address, &tb) == 0 && tb.pc == address
                && tb.size == size && tb.icount != 0) {
            e->icount = tb.icount;
            e->flags = 0;
        } else if (!learn(r, e, address, size)) {
            stop_before(uc, r, STOP_UNKNOWN, address, size, 0);
            return;
        }
        e->address = address;
        e->size = size;
    }
    if (guard) {
        if (!(e->flags & IO_KNOWN) && !learn(r, e, address, size)) {
            stop_before(uc, r, STOP_UNKNOWN, address, size, e);
            return;
        }
        if (e->flags & HAS_IO) {
            stop_before(uc, r, STOP_IO, address, size, e);
            return;
        }
    }
    if (aligned) {
        if (!(e->flags & ALIGN_KNOWN) && !learn(r, e, address, size)) {
            stop_before(uc, r, STOP_UNKNOWN, address, size, e);
            return;
        }
        if (e->flags & HAS_ALIGNED) {
            stop_before(uc, r, STOP_ALIGN, address, size, e);
            return;
        }
    }
    if (watched) {
        if (!(e->flags & WATCH_KNOWN) && !learn(r, e, address, size)) {
            stop_before(uc, r, STOP_UNKNOWN, address, size, e);
            return;
        }
        if ((e->flags & HAS_WATCHED) || ((e->flags & HAS_WATCHED_NT) && (*r->eflags_at & EFLAGS_NT))) {
            stop_before(uc, r, STOP_WATCH, address, size, e);
            return;
        }
    }
    /* A store into the running block's own code: QEMU drops the block and runs the store
     * again as a block of one instruction; the rest of the old block never ran. */
    if (smc && e->icount == 1 && r->block_icount && address >= r->block_address
            && address < r->block_address + r->block_size && r->learn != 0) {
        uint32_t before = address > r->block_address
            ? r->learn(r->block_address, (uint32_t)(address - r->block_address)) & 0xFFFF : 0;
        if (before < r->block_icount)
            r->counter -= r->block_icount - before;
    }
    if (r->exact && r->counter + e->icount > r->deadline) {
        stop_before(uc, r, STOP_CROSSING, address, size, e);
        return;
    }
    r->counter += e->icount;
    r->block_address = address;
    r->block_size = size;
    r->block_icount = e->icount;
}
