/* tlbfill.c - the TLB fill: stores at full speed with paging off, and the MMU of the
 * techniques that virtualize memory (trap's shadow, hvm's two-dimensional walk with EPT).
 *
 * Since Unicorn 2.1.2 (a fix for self-modifying code), notdirty_write in
 * qemu/accel/tcg/cputlb.c marks a TLB entry "dirty" - which lets the translated code
 * store straight into host memory - only when the entry is not executable
 * (tlbe->addr_code == -1). QEMU's own test, "does this page hold translated code?", is
 * stubbed out in Unicorn, so this is Unicorn's stand-in for it. But with guest paging
 * off the x86 walker gives every page read, write and execute, so no entry is ever
 * dirty and every guest store runs helper_*_st*_mmu: two memory-map lookups and a check
 * for translated code to invalidate, 5-10x the cost of the store. (A paged guest that
 * sets NX on its data pages does not pay it, which is how the cause was found.)
 *
 * Unicorn lets a program replace the walker: in UC_TLB_VIRTUAL mode a UC_HOOK_TLB_FILL
 * callback fills each TLB entry. This file is that callback, for paging off: the
 * physical address is the linear one (as the walker gives it), the page is always
 * readable and writable, and it is executable only for an instruction fetch or when an
 * instruction was ever fetched from it before ("executed", a sticky bit per page). So a
 * data page gets an entry without execute, and after its first store Unicorn's own
 * notdirty_write lets every later store take the fast path; a page that holds code keeps
 * execute, so every store to it stays on the slow path, which is where QEMU looks for
 * translated code to throw away: self-modifying code works as before.
 *
 * One gap that needs care: QEMU keeps one TLB per MMU index (kernel and user accesses
 * differ), and a data entry made dirty in one index before the page's first fetch would
 * let stores in that index skip the code check for good. So the first fetch from a page
 * flushes the whole TLB (once per code page; afterwards every fill of that page, in any
 * index, gives execute).
 *
 * Paging on is not this file's business: the CPU's own walker sets accessed and dirty
 * bits and raises #PF. When a fill finds CR0.PG set, the callback refuses it and raises
 * `paging`: emu_start then fails with UC_ERR_EXCEPTION, EIP on the instruction, nothing
 * of it done, and the monitor switches the CPU back to its walker (UC_TLB_CPU) and
 * restarts (hypervisor/machine/native/tlbfill.py). A CR0 write that changes PG flushes
 * the TLB, so the first access after it always comes here.
 *
 * Two more modes make this callback the memory virtualization of the monitors that need
 * one (hypervisor/memory/). Both walk the guest's own 32-bit page tables here, in C (EPT on
 * every TLB miss, SHADOW where its cache cannot answer), as QEMU 7.2's mmu_translate does (hypervisor/memory/walker.py is the
 * same walk in Python, and the reference the tests hold this one to): a not-present or
 * forbidden entry refuses the fill and leaves the #PF's error code in the record; the
 * accessed bit of a PDE is set as the walk passes it, the leaf's A (and D on a write) once
 * the access is allowed; a page whose D is still clear is filled without write, so the
 * first store comes back here to set it, exactly when the bare machine sets it.
 *
 *   SHADOW  (trap) the guest's CR0/CR3/CR4 are the virtual ones the monitor keeps (the real
 *           CPU runs with paging off); the privilege of an access is the real CPL's (the
 *           guest kernel runs in ring 1, a supervisor ring, its ring 3 in ring 3). A miss is
 *           served by the cached shadow page tables (below), which map guest-virtual to
 *           guest-physical pages (Unicorn's memory map turns those into machine frames: the
 *           P2M); only where they hold nothing that allows the access is the guest's table
 *           walked, and the shadow filled.
 *   EPT     (hvm) the guest's CR0/CR3/CR4 are the real ones (it runs at its own ring 0 and
 *           loads them itself); every guest-physical address the walk or the access itself
 *           touches must also be allowed by the EPT (read, write, execute per guest frame),
 *           or the fill is refused as an EPT violation with its qualification.
 * Either way, a guest-physical address outside RAM that no device claims is refused as a
 * bus error, never passed on: the monitor's own memory lies above 4 GiB, where PSE-36 could
 * otherwise point a 4 MiB page.
 *
 * Built by the package's install step (setup.py), loaded with ctypes; like the other
 * files here it needs no Unicorn header and links against nothing: the two library
 * functions it calls arrive as pointers, and the constants as fields.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*uc_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*uc_ctl_fn)(void *uc, int control, ...);
typedef void (*alias_notify_fn)(uint64_t gpa, uint32_t size, uint64_t value);
struct shadows;

struct uc_tlb_entry {           /* unicorn.h: struct uc_tlb_entry */
    uint64_t paddr;
    int perms;                  /* uc_prot */
};

enum { PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4 };     /* uc_prot, fixed by Unicorn's ABI */
enum { MODE_IDENTITY = 0, MODE_SHADOW = 1, MODE_EPT = 2 };
/* Why the last fill was refused (struct fill.fault). */
enum { FAULT_NONE = 0, FAULT_PF = 1, FAULT_EPT = 2, FAULT_BUS = 3, FAULT_UNSUPPORTED = 4, FAULT_CODE = 5 };
/* struct fill.ept, per guest frame. EPT_CODE (SHADOW): translated code was read from the frame
 * (binary translation): a store to it is refused (FAULT_CODE) before it happens, so the monitor
 * drops the translations and runs the store itself, outside them. */
enum { EPT_R = 1, EPT_W = 2, EPT_X = 4, EPT_MMIO = 8, EPT_CODE = 16 };

#define CR0_PG (1u << 31)
#define CR0_WP (1u << 16)
#define CR4_PSE (1u << 4)
#define CR4_PAE (1u << 5)
#define PAGE_SHIFT 12
#define PG_P 1u
#define PG_RW 2u
#define PG_US 4u
#define PG_A 0x20u
#define PG_D 0x40u
#define PG_PS 0x80u
#define PF_P 1u
#define PF_W 2u
#define PF_U 4u
#define PF_RSVD 8u
#define FOUR_GIB (1ull << 32)

/* Shared with Python (ctypes.Structure _Fill in tlbfill.py): keep both in step. */
struct fill {
    volatile int32_t paging;    /* set here when a fill found CR0.PG: the monitor must switch walkers */
    int32_t cr0_regid;          /* UC_X86_REG_CR0 */
    int32_t fetch_type;         /* UC_MEM_FETCH */
    int32_t flush_control;      /* UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0) */
    uint64_t fills;             /* entries filled (statistics, and tests) */
    uint64_t code_pages;        /* pages whose first fetch set their "executed" bit */
    uc_reg_read_fn reg_read;
    uc_ctl_fn ctl;
    uint8_t *executed;          /* one bit per 4 KiB page of the 4 GiB (physical) space */
    /* -- the walking modes -- */
    int32_t mode;               /* MODE_* */
    int32_t write_type;         /* UC_MEM_WRITE */
    const volatile uint32_t *hflags_at;  /* QEMU's env->hflags: the CPL in bits 0-1 */
    const volatile uint32_t *cr0_at;     /* the guest's CR0, CR3, CR4 (low halves): the three */
    const volatile uint32_t *cr3_at;     /* fields below (SHADOW) or QEMU's env->cr[] (EPT) */
    const volatile uint32_t *cr4_at;
    uint32_t cr0, cr3, cr4;     /* SHADOW: the virtual control registers, kept by the monitor */
    uint32_t pfns;              /* guest RAM, in 4 KiB frames */
    uint8_t *base;              /* the machine's memory (MachineMemory.base_address) */
    const uint32_t *p2m;        /* pfn -> mfn, for the walk's own reads and A/D writes */
    const uint8_t *ept;         /* EPT_* per frame of the 4 GiB guest-physical space: the EPT
                                 * (EPT), or the frame table's write protection (SHADOW) */
    uint32_t ept_frames;        /* entries in ``ept`` */
    /* -- what a refused fill leaves for the monitor -- */
    volatile int32_t fault;     /* FAULT_*; 0 when the last refusal was not this file's */
    uint32_t error_code;        /* FAULT_PF: the #PF error code */
    uint32_t qualification;     /* FAULT_EPT: the exit qualification's access and permission bits;
                                 * FAULT_BUS: bit 8 as for EPT (the access itself, or a walk's) */
    uint64_t guest_physical;    /* FAULT_EPT, FAULT_BUS: the guest-physical address */
    /* SHADOW: the cached shadow page tables (below), or NULL: every fill walks the guest's
     * tables (EPT). ``hidden_faults``: fills the shadow could not serve, which walked and
     * filled it (a shadow page fault in a monitor whose CPU walks the shadow itself). */
    struct shadows *sh;
    uint64_t hidden_faults;
    const uint8_t *tables_at;   /* QEMU's env->ldt, then tr and gdt (SegmentCache, 24 bytes each),
                                 * or NULL: see implicit_supervisor */
    uint64_t alias_base;        /* SHADOW: a store to a write-protected frame goes to alias_base +
                                 * its guest-physical address, where hv_alias_write performs it
                                 * (and the monitor hears of it); 0: refused as an EPT violation */
    void *uc;                   /* the engine, for TLB flushes outside a callback's arguments */
    alias_notify_fn notify;     /* a store to a frame the monitor itself protects (a GDT): the
                                 * monitor performs it (hv_alias_write) */
};

static inline void mark_executed(struct fill *f, void *uc, uint64_t paddr, int type)
{
    uint32_t page = (uint32_t)(paddr >> PAGE_SHIFT) & 0xFFFFF;
    uint8_t bit = (uint8_t)(1u << (page & 7));
    if (type == f->fetch_type && !(f->executed[page >> 3] & bit)) {
        f->executed[page >> 3] |= bit;
        f->code_pages++;
        /* Entries of this page made earlier, for data, may be dirty in another MMU index:
         * drop them all, so every entry of the page from now on has execute. */
        f->ctl(uc, f->flush_control);
    }
}

static inline int executed(const struct fill *f, uint64_t paddr)
{
    uint32_t page = (uint32_t)(paddr >> PAGE_SHIFT) & 0xFFFFF;
    return f->executed[page >> 3] & (1u << (page & 7));
}

/* The host address of a 4-byte page-table entry at guest-physical ``gpa``, or 0 outside RAM. */
static inline volatile uint32_t *entry_at(const struct fill *f, uint64_t gpa)
{
    uint64_t pfn = gpa >> PAGE_SHIFT;
    if (pfn >= f->pfns)
        return 0;
    return (volatile uint32_t *)(f->base + ((uint64_t)f->p2m[pfn] << PAGE_SHIFT) + (gpa & 0xFFC));
}

static inline uint8_t ept_of(const struct fill *f, uint64_t gpa)
{
    uint64_t frame = gpa >> PAGE_SHIFT;
    return frame < f->ept_frames ? f->ept[frame] : 0;
}

/* EPT: may the walk (or the access) touch ``gpa`` this way? Otherwise an EPT violation. */
static int ept_allows(struct fill *f, uint64_t gpa, uint8_t need, int translation)
{
    uint8_t rights;
    if (f->mode != MODE_EPT)
        return 1;
    rights = ept_of(f, gpa);
    if ((rights & need) == need)
        return 1;
    f->fault = FAULT_EPT;
    f->guest_physical = gpa;
    /* SDM Table 28-7: bits 0-2 the access (read, write, fetch), 3-5 what the entry allows,
     * bit 7 a guest-linear address is valid, bit 8 the access was its translation (1) or
     * a walk of the guest's tables (0). */
    f->qualification = (need & EPT_W ? 2u : need & EPT_X ? 4u : 1u) | ((uint32_t)(rights & 7) << 3)
                       | (1u << 7) | (translation ? 1u << 8 : 0);
    return 0;
}

static int page_fault(struct fill *f, uint32_t code, int write, int user)
{
    f->fault = FAULT_PF;
    f->error_code = code | (write ? PF_W : 0) | (user ? PF_U : 0);
    return 0;
}

/* Set ``bits`` in an entry, writing only when one of them was clear; the write is a store to
 * guest memory, which the EPT must allow. */
static int set_bits(struct fill *f, volatile uint32_t *at, uint64_t gpa, uint32_t entry, uint32_t bits)
{
    if (!(bits & ~entry))
        return 1;
    if (!ept_allows(f, gpa, EPT_W, 0))
        return 0;
    *at = entry | bits;
    return 1;
}

/* Read the entry at ``gpa`` for the walk: 0 with the fault set when it cannot be. */
static volatile uint32_t *walk_read(struct fill *f, uint64_t gpa)
{
    volatile uint32_t *at;
    if (!ept_allows(f, gpa, EPT_R, 0))
        return 0;
    at = entry_at(f, gpa);
    if (at == 0) {
        f->fault = FAULT_BUS;
        f->guest_physical = gpa;
        f->qualification = 0;                   /* a walk's access, at the entry's own address */
    }
    return at;
}

/* What a successful walk found: the guest-physical page, whether the TLB may take writes,
 * and what the shadow keeps of it (the combined RW and US of the PDE and PTE, the leaf's D
 * after this access, and the page table the PTE was in, or NO_TABLE for a 4 MiB page). */
struct walk {
    uint64_t gpa;
    int writable;
    uint32_t flags;
    uint32_t table;
};
#define NO_TABLE 0xFFFFFFFFu

/* Two-level 32-bit paging (SDM vol. 3, 4.3), as hypervisor/memory/walker.py: 0 with the
 * fault set when the access is refused. */
static int walk32(struct fill *f, uint32_t cr0, uint32_t cr3, uint32_t cr4, uint32_t linear, int write, int user,
                  struct walk *w)
{
    uint64_t pde_gpa = (cr3 & 0xFFFFF000u) + ((linear >> 20) & 0xFFC);
    volatile uint32_t *pde_at = walk_read(f, pde_gpa), *leaf_at;
    uint32_t pde, leaf, rights;
    uint64_t leaf_gpa, frame;

    if (pde_at == 0)
        return 0;
    pde = *pde_at;
    if (!(pde & PG_P))
        return page_fault(f, 0, write, user);
    if ((pde & PG_PS) && (cr4 & CR4_PSE)) {
        /* 4 MiB page. PSE-36: PDE bits 20:13 are physical-address bits 39:32; bit 21 is reserved. */
        leaf_at = pde_at;
        leaf_gpa = pde_gpa;
        leaf = pde;
        rights = pde;
        if (pde & (1u << 21))
            return page_fault(f, PF_RSVD, write, user);
        frame = ((uint64_t)(pde & 0xFFC00000u) | ((uint64_t)(pde & 0x1FE000u) << 19))
                + (linear & 0x3FF000u);
        w->table = NO_TABLE;
    } else {
        if (!set_bits(f, pde_at, pde_gpa, pde, PG_A))
            return 0;
        leaf_gpa = (pde & 0xFFFFF000u) + ((linear >> 10) & 0xFFC);
        leaf_at = walk_read(f, leaf_gpa);
        if (leaf_at == 0)
            return 0;
        leaf = *leaf_at;
        if (!(leaf & PG_P))
            return page_fault(f, 0, write, user);
        rights = pde & leaf;
        frame = leaf & 0xFFFFF000u;
        w->table = pde >> PAGE_SHIFT;
    }
    if (user && !(rights & PG_US))
        return page_fault(f, PF_P, write, user);
    if (write && !(rights & PG_RW) && (user || (cr0 & CR0_WP)))
        return page_fault(f, PF_P, write, user);
    if (!set_bits(f, leaf_at, leaf_gpa, leaf, PG_A | (write ? PG_D : 0)))
        return 0;
    w->gpa = frame;
    w->flags = (rights & (PG_RW | PG_US)) | (write ? PG_D : leaf & PG_D);
    /* Writes may go straight to memory only once D is set, and only where they are allowed. */
    w->writable = (w->flags & PG_D) && ((rights & PG_RW) || (!user && !(cr0 & CR0_WP)));
    return 1;
}

/* -- SHADOW: cached shadow page tables ----------------------------------------------------
 *
 * The shadow of one guest address space is a page directory of shadow entries, kept here
 * (hypervisor/memory/shadow.py tells the design). A shadow PDE is 0, a 4 MiB leaf (SH_PS),
 * or the index of a shadow page table in a pool of them; a shadow PTE (or 4 MiB leaf) holds
 * the guest-physical page and the rights the guest's two entries combine to, with the leaf's
 * D. An entry exists only after a walk of the guest's tables made it (with A set there), so a
 * fill that finds one allowing the access is served without reading the guest's tables at
 * all, and one that does not walks (a hidden fault) and fills the shadow.
 *
 * The shadow stays true because every guest frame it was built from (each space's page
 * directory, each page table an L1 shadows) is write-protected while referenced (``refs``):
 * a store to one goes to the alias window, where hv_alias_write performs it and drops every
 * shadow entry built from the bytes it changed, in every space (a table shared by two
 * address spaces, reached through a recursive PDE or mapped twice). The CPU's TLB is then
 * flushed, so the change is seen at once, the same run after run.
 *
 * Several spaces are cached, one per guest CR3, at most ``nspaces``: a CR3 load switches to
 * the space of the new CR3 (at the next fill), creating it, or reusing the least recently
 * loaded one, on a miss. The shadow page tables come from a pool of ``npool``; when it runs
 * dry, every space is dropped and the shadow starts again (a flush on full). */
#define SH_P PG_P
#define SH_PS PG_PS
#define SH_FLAGS (PG_RW | PG_US | PG_D)
#define NO_SPACE 0xFFFFFFFFu
#define ENTRIES 1024
#define FRAME_SHADOWED 4        /* machine/memory.py SHADOWED */

struct space {
    uint32_t cr3;               /* the guest page directory it shadows (CR3 & ~0xFFF), or NO_SPACE */
    uint32_t used;              /* ``clock`` when CR3 last switched to it */
    uint32_t dir[ENTRIES];      /* shadow PDEs: 0, a 4 MiB leaf, or (pool index + 1) << 12 | SH_P */
    uint32_t src[ENTRIES];      /* the guest page table (pfn) each shadow page table mirrors */
};

struct shadow_stats {           /* hv_shadow_stats: keep in step with shadow.py */
    uint64_t hits;              /* fills served by the shadow alone */
    uint64_t spaces_made;       /* CR3 loads that found no cached space */
    uint64_t spaces_reused;     /* CR3 loads that switched to a cached one */
    uint64_t evictions;         /* spaces dropped for a new one (the bound) */
    uint64_t table_writes;      /* guest stores to a write-protected page-table frame */
    uint64_t entries_dropped;   /* shadow entries those stores dropped */
    uint64_t invalidations;     /* invlpg */
    uint64_t full_flushes;      /* the pool ran dry */
};

struct shadows {
    uint32_t nspaces, npool, nfree, clock;
    uint32_t current;           /* the space in use, or NO_SPACE */
    uint32_t pfns;              /* guest RAM frames: the length of refs and table_refs */
    struct space *spaces;
    uint32_t *pool;             /* npool shadow page tables of ENTRIES entries */
    uint32_t *free;             /* a stack of free pool indexes */
    uint16_t *refs;             /* per guest frame: the shadow's references (write-protected while > 0) */
    uint16_t *table_refs;       /* per guest frame: those made as a page table */
    uint8_t *frame_flags;       /* the frame table's flag byte per machine frame (machine/memory.py) */
    struct shadow_stats stats;
};

static void flush_tlb(struct fill *f)
{
    f->ctl(f->uc, f->flush_control);
}

static void ref(struct fill *f, uint32_t pfn, uint16_t *table_refs)
{
    struct shadows *sh = f->sh;
    if (pfn >= sh->pfns)
        return;
    if (table_refs != 0)
        table_refs[pfn]++;
    if (sh->refs[pfn]++ == 0) {
        /* Newly protected, in the frame table too; a TLB entry that lets stores reach the frame
         * directly must go. */
        sh->frame_flags[f->p2m[pfn]] |= FRAME_SHADOWED;
        flush_tlb(f);
    }
}

static void unref(struct fill *f, uint32_t pfn, uint16_t *table_refs)
{
    struct shadows *sh = f->sh;
    if (pfn >= sh->pfns || sh->refs[pfn] == 0)
        return;
    if (--sh->refs[pfn] == 0)
        sh->frame_flags[f->p2m[pfn]] &= (uint8_t)~FRAME_SHADOWED;
    if (table_refs != 0 && table_refs[pfn] != 0)
        table_refs[pfn]--;
}

static uint32_t *l1_of(const struct shadows *sh, uint32_t pde)
{
    return sh->pool + (size_t)((pde >> PAGE_SHIFT) - 1) * ENTRIES;
}

static void drop_dir(struct fill *f, struct space *s, uint32_t i)
{
    struct shadows *sh = f->sh;
    uint32_t e = s->dir[i];
    if (!(e & SH_P))
        return;
    if (!(e & SH_PS)) {
        uint32_t *l1 = l1_of(sh, e), k;
        for (k = 0; k < ENTRIES; k++)
            l1[k] = 0;
        sh->free[sh->nfree++] = (e >> PAGE_SHIFT) - 1;
        unref(f, s->src[i], sh->table_refs);
    }
    s->dir[i] = 0;
}

static void drop_space(struct fill *f, struct space *s)
{
    uint32_t i;
    if (s->cr3 == NO_SPACE)
        return;
    for (i = 0; i < ENTRIES; i++)
        drop_dir(f, s, i);
    unref(f, s->cr3 >> PAGE_SHIFT, 0);
    s->cr3 = NO_SPACE;
}

/* Drop every cached space (a paging-mode change, a full pool). Called through ctypes too. */
void hv_shadow_reset(struct fill *f)
{
    struct shadows *sh = f->sh;
    uint32_t i;
    if (sh == 0)
        return;
    for (i = 0; i < sh->nspaces; i++)
        drop_space(f, &sh->spaces[i]);
    sh->current = NO_SPACE;
}

/* The space of the guest's current CR3, switching to (or making) it after a CR3 load. */
static struct space *space_of(struct fill *f, uint32_t cr3)
{
    struct shadows *sh = f->sh;
    struct space *s;
    uint32_t page = cr3 & 0xFFFFF000u, i, victim = 0;

    if (sh->current != NO_SPACE && sh->spaces[sh->current].cr3 == page)
        return &sh->spaces[sh->current];
    for (i = 0; i < sh->nspaces; i++) {
        s = &sh->spaces[i];
        if (s->cr3 == page) {
            sh->stats.spaces_reused++;
            goto found;
        }
        if (s->cr3 == NO_SPACE || (sh->spaces[victim].cr3 != NO_SPACE && s->used < sh->spaces[victim].used))
            victim = i;
    }
    i = victim;
    s = &sh->spaces[i];
    if (s->cr3 != NO_SPACE) {
        sh->stats.evictions++;
        drop_space(f, s);
    }
    sh->stats.spaces_made++;
    s->cr3 = page;
    ref(f, page >> PAGE_SHIFT, 0);
found:
    s->used = ++sh->clock;
    sh->current = i;
    return s;
}

/* The shadow entry for ``linear`` in space ``s`` (a 4 MiB leaf made into its 4 KiB piece), or 0. */
static uint32_t shadow_lookup(const struct shadows *sh, const struct space *s, uint32_t linear)
{
    uint32_t e = s->dir[linear >> 22];
    if (!(e & SH_P))
        return 0;
    if (e & SH_PS)
        return e + (linear & 0x3FF000u);
    return l1_of(sh, e)[(linear >> PAGE_SHIFT) & (ENTRIES - 1)];
}

/* Would the bare machine allow this access through an entry with these combined rights, with
 * nothing to set in the guest's entries (A is set, and D too for a write)? */
static int shadow_allows(uint32_t e, int write, int user, uint32_t cr0)
{
    if (!(e & SH_P) || (user && !(e & PG_US)))
        return 0;
    return !write || ((e & PG_D) && ((e & PG_RW) || (!user && !(cr0 & CR0_WP))));
}

/* Record a walk's result in the current space. */
static void shadow_fill(struct fill *f, uint32_t cr3, uint32_t linear, const struct walk *w)
{
    struct shadows *sh = f->sh;
    struct space *s = space_of(f, cr3);
    uint32_t i = linear >> 22, e = s->dir[i], index;

    if (w->gpa >= FOUR_GIB)
        return;                                 /* PSE-36 beyond 4 GiB: refused after this */
    if (w->table == NO_TABLE) {
        drop_dir(f, s, i);
        s->dir[i] = (((uint32_t)w->gpa - (linear & 0x3FF000u)) & 0xFFC00000u) | w->flags | SH_PS | SH_P;
        return;
    }
    if ((e & SH_P) && ((e & SH_PS) || s->src[i] != w->table)) {
        drop_dir(f, s, i);
        e = 0;
    }
    if (!(e & SH_P)) {
        if (sh->nfree == 0) {
            sh->stats.full_flushes++;
            hv_shadow_reset(f);
            s = space_of(f, cr3);
        }
        index = sh->free[--sh->nfree];
        s->dir[i] = e = ((index + 1) << PAGE_SHIFT) | SH_P;
        s->src[i] = w->table;
        ref(f, w->table, sh->table_refs);
    }
    l1_of(sh, e)[(linear >> PAGE_SHIFT) & (ENTRIES - 1)] = (uint32_t)w->gpa | w->flags | SH_P;
}

/* Guest-physical bytes [gpa, gpa + size) of one frame changed: drop the shadow entries built
 * from them, in every space. Called for the alias window's stores and, through ctypes, for the
 * monitor's own writes to guest memory. */
void hv_shadow_wrote(struct fill *f, uint64_t gpa, uint32_t size)
{
    struct shadows *sh = f->sh;
    uint32_t pfn = (uint32_t)(gpa >> PAGE_SHIFT), first, last, n, i, k, dropped = 0;

    if (sh == 0 || pfn >= sh->pfns || sh->refs[pfn] == 0 || size == 0)
        return;
    first = (uint32_t)(gpa & 0xFFF) >> 2;
    last = (uint32_t)((gpa & 0xFFF) + size - 1) >> 2;
    if (last >= ENTRIES)
        last = ENTRIES - 1;
    sh->stats.table_writes++;
    for (n = 0; n < sh->nspaces; n++) {
        struct space *s = &sh->spaces[n];
        if (s->cr3 == NO_SPACE)
            continue;
        if (s->cr3 >> PAGE_SHIFT == pfn)
            for (k = first; k <= last; k++)
                if (s->dir[k] & SH_P) {
                    drop_dir(f, s, k);
                    dropped++;
                }
        if (sh->table_refs[pfn] == 0)
            continue;
        for (i = 0; i < ENTRIES; i++) {
            uint32_t e = s->dir[i], *l1;
            if (!(e & SH_P) || (e & SH_PS) || s->src[i] != pfn)
                continue;
            l1 = l1_of(sh, e);
            for (k = first; k <= last; k++)
                if (l1[k]) {
                    l1[k] = 0;
                    dropped++;
                }
        }
    }
    sh->stats.entries_dropped += dropped;
    if (dropped)
        flush_tlb(f);
}

/* invlpg: drop the current space's entry for ``linear`` (the caller flushes the TLB). */
void hv_shadow_invalidate(struct fill *f, uint32_t linear)
{
    struct shadows *sh = f->sh;
    struct space *s;
    uint32_t e;
    if (sh == 0 || sh->current == NO_SPACE)
        return;
    sh->stats.invalidations++;
    s = &sh->spaces[sh->current];
    if (s->cr3 != (f->cr3 & 0xFFFFF000u))
        return;
    e = s->dir[linear >> 22];
    if (e & SH_PS)
        drop_dir(f, s, linear >> 22);
    else if (e & SH_P)
        l1_of(sh, e)[(linear >> PAGE_SHIFT) & (ENTRIES - 1)] = 0;
}

size_t hv_shadow_size(void)
{
    return sizeof(struct shadows);
}

size_t hv_space_size(void)
{
    return sizeof(struct space);
}

/* Give the fill its shadow: ``sh`` (hv_shadow_size bytes) and the arrays it points at, all
 * zeroed and owned by the caller (machine/native/tlbfill.py). */
void hv_shadow_init(struct fill *f, struct shadows *sh, struct space *spaces, uint32_t nspaces, uint32_t *pool,
                    uint32_t npool, uint32_t *free_stack, uint16_t *refs, uint16_t *table_refs, uint32_t pfns,
                    uint8_t *frame_flags)
{
    uint32_t i;
    sh->nspaces = nspaces;
    sh->npool = sh->nfree = npool;
    sh->clock = 0;
    sh->current = NO_SPACE;
    sh->pfns = pfns;
    sh->spaces = spaces;
    sh->pool = pool;
    sh->free = free_stack;
    sh->refs = refs;
    sh->table_refs = table_refs;
    sh->frame_flags = frame_flags;
    for (i = 0; i < nspaces; i++)
        spaces[i].cr3 = NO_SPACE;
    for (i = 0; i < npool; i++)
        free_stack[i] = npool - 1 - i;          /* index 0 on top: the same order every run */
    f->sh = sh;
}

void hv_shadow_stats(const struct fill *f, struct shadow_stats *out)
{
    if (f->sh != 0)
        *out = f->sh->stats;
}

struct segment_cache {          /* QEMU's SegmentCache */
    uint32_t selector;
    uint32_t pad;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
};

/* Is a CPL-3 access to this page one of the CPU's own supervisor accesses? The callback is not
 * told QEMU's MMU index, which says so: a descriptor read for a segment load or a far
 * transfer, a TSS read for a stack switch or a task switch, all at CPL 3, are made with the
 * kernel's index, which the guest's U/S bits do not restrict. They all touch the GDT, the LDT
 * or the TSS, so an access at CPL 3 to a page of one of those is walked as a supervisor one
 * (README, known limits: so is an explicit user access to such a page). */
static int implicit_supervisor(const struct fill *f, uint64_t page)
{
    const struct segment_cache *c = (const struct segment_cache *)f->tables_at;
    int i;
    if (c == 0)
        return 0;
    for (i = 0; i < 3; i++) {
        uint64_t base = c[i].base, end = base + c[i].limit;
        if (c[i].limit != 0 && page <= end && base < page + 4096)
            return 1;
    }
    return 0;
}

/* SHADOW with the guest's paging on: the guest-physical page of ``vaddr`` from the shadow, or
 * from a walk of the guest's tables that then fills it (a hidden fault). */
static int shadow_translate(struct fill *f, uint32_t vaddr, int write, int user, struct walk *w)
{
    struct shadows *sh = f->sh;
    uint32_t cr0 = *f->cr0_at, cr3 = *f->cr3_at, e;

    e = shadow_lookup(sh, space_of(f, cr3), vaddr);
    if (shadow_allows(e, write, user, cr0)) {
        sh->stats.hits++;
        w->gpa = e & 0xFFFFF000u;
        w->writable = (e & PG_D) && ((e & PG_RW) || (!user && !(cr0 & CR0_WP)));
        return 1;
    }
    if (!walk32(f, cr0, cr3, *f->cr4_at, vaddr, write, user, w))
        return 0;                               /* the guest's own fault: reflected */
    f->hidden_faults++;
    shadow_fill(f, cr3, vaddr, w);
    return 1;
}

/* SHADOW and EPT: translate ``vaddr`` through the guest's tables (when its paging is on),
 * check the result against RAM and the EPT, and fill the entry. */
static bool walk_fill(struct fill *f, void *uc, uint64_t vaddr, int type, struct uc_tlb_entry *entry)
{
    int write = type == f->write_type, fetch = type == f->fetch_type;
    int user = (*f->hflags_at & 3) == 3 && !implicit_supervisor(f, vaddr);
    struct walk w = {vaddr, 1, 0, NO_TABLE};
    uint64_t gpa;
    uint8_t need, rights;

    f->fault = FAULT_NONE;
    if (*f->cr0_at & CR0_PG) {
        if (*f->cr4_at & CR4_PAE) {
            f->fault = FAULT_UNSUPPORTED;       /* PAE: the monitor says so and ends the run */
            return false;
        }
        if (f->sh != 0 ? !shadow_translate(f, (uint32_t)vaddr, write, user, &w)
                       : !walk32(f, *f->cr0_at, *f->cr3_at, *f->cr4_at, (uint32_t)vaddr, write, user, &w))
            return false;
    }
    gpa = w.gpa;
    need = write ? EPT_W : fetch ? EPT_X : EPT_R;
    rights = f->ept != 0 ? ept_of(f, gpa)
           : gpa >> PAGE_SHIFT < f->pfns ? (EPT_R | EPT_W | EPT_X)
           : gpa < FOUR_GIB ? EPT_MMIO : 0;
    if (f->sh != 0 && gpa >> PAGE_SHIFT < f->sh->pfns && f->sh->refs[gpa >> PAGE_SHIFT])
        rights &= ~EPT_W;                       /* a page table the shadow mirrors */
    if (rights & EPT_MMIO) {
        /* A device's page (or nothing, where Unicorn then reports the access as native does). */
        f->fills++;
        entry->paddr = gpa;
        entry->perms = PROT_READ | PROT_WRITE;
        return true;
    }
    if (write && (rights & EPT_CODE) && f->mode == MODE_SHADOW) {
        f->fault = FAULT_CODE;                  /* a store to translated code: before it happens */
        f->guest_physical = gpa;
        f->qualification = 1u << 8;
        return false;
    }
    if (write && !(rights & EPT_W) && f->mode == MODE_SHADOW && f->alias_base != 0
            && gpa >> PAGE_SHIFT < f->pfns) {
        /* A frame the monitor shadows (a page table, a GDT): the store is the monitor's to perform. */
        f->fills++;
        entry->paddr = f->alias_base + gpa;
        entry->perms = PROT_READ | PROT_WRITE;
        return true;
    }
    if ((rights & need) != need) {
        if (f->mode == MODE_EPT) {
            ept_allows(f, gpa, need, 1);
        } else {
            f->fault = FAULT_BUS;               /* nothing there, or the monitor's own memory */
            f->guest_physical = gpa;
            f->qualification = 1u << 8;         /* the access itself: the page, its offset is CR2's */
        }
        return false;
    }
    mark_executed(f, uc, gpa, type);
    f->fills++;
    entry->paddr = gpa;
    entry->perms = PROT_READ | (w.writable && (rights & EPT_W) ? PROT_WRITE : 0)
                   | ((rights & EPT_X) && executed(f, gpa) ? PROT_EXEC : 0);
    return true;
}

/* The alias window (SHADOW): a store to a write-protected frame arrives at alias_base + its
 * guest-physical address. A frame the monitor itself shadows (a GDT or LDT: not writable in
 * the frame table's rights) is the monitor's to write (``notify``); a page table the shadow
 * mirrors is written here, and the shadow entries built from it are dropped.
 * uc_cb_mmio_write_t and uc_cb_mmio_read_t; registered by tlbfill.py with uc_mmio_map. */
void hv_alias_write(void *uc, uint64_t gpa, unsigned size, uint64_t value, void *user_data)
{
    struct fill *f = user_data;
    uint64_t pfn = gpa >> PAGE_SHIFT;
    unsigned i;

    (void)uc;
    if (pfn >= f->pfns)
        return;
    if (pfn < f->ept_frames && !(f->ept[pfn] & EPT_W) && f->notify != 0) {
        f->notify(gpa, size, value);            /* the monitor writes it, and tells the shadow */
        return;
    }
    for (i = 0; i < size && ((gpa + i) & 0xFFF) >= (gpa & 0xFFF); i++)
        f->base[((uint64_t)f->p2m[pfn] << PAGE_SHIFT) + ((gpa + i) & 0xFFF)] = (uint8_t)(value >> (8 * i));
    hv_shadow_wrote(f, gpa, size);
}

uint64_t hv_alias_read(void *uc, uint64_t gpa, unsigned size, void *user_data)
{
    const struct fill *f = user_data;
    uint64_t pfn = gpa >> PAGE_SHIFT, value = 0;
    unsigned i;

    (void)uc;
    if (pfn >= f->pfns)
        return 0;
    for (i = 0; i < size && ((gpa + i) & 0xFFF) >= (gpa & 0xFFF); i++)
        value |= (uint64_t)f->base[((uint64_t)f->p2m[pfn] << PAGE_SHIFT) + ((gpa + i) & 0xFFF)] << (8 * i);
    return value;
}

/* The same walk for the monitor's own accesses on the guest's behalf (delivering an event,
 * reading an instruction), with the control registers given: 0 and the guest-physical
 * address, or FAULT_PF (the error code in f->error_code), FAULT_BUS, FAULT_EPT, or
 * FAULT_UNSUPPORTED for PAE, which the caller walks in Python. Accessed and dirty bits are
 * set exactly as for a fill. Called through ctypes (walker.py's GuestAddressSpace). */
int hv_walk(struct fill *f, uint32_t cr0, uint32_t cr3, uint32_t cr4, uint32_t linear, int write, int user,
            uint64_t *gpa, uint32_t *error)
{
    /* What a refused fill left for the monitor must survive a walk the monitor makes before it
     * looks (decoding the running block): the walk's own outcome goes to *gpa and *error. */
    int32_t fault = f->fault;
    uint32_t error_code = f->error_code, qualification = f->qualification;
    uint64_t guest_physical = f->guest_physical;
    struct walk w;
    int mode, ok, kind = 0;

    if (!(cr0 & CR0_PG)) {
        *gpa = linear;
        return 0;
    }
    if (cr4 & CR4_PAE)
        return FAULT_UNSUPPORTED;
    /* The EPT is not asked: the monitor's accesses are its own (the caller checks what the
     * guest may reach), and a page the dirty log write-protects must not stop them. */
    mode = f->mode;
    f->mode = MODE_SHADOW;
    ok = walk32(f, cr0, cr3, cr4, linear, write, user, &w);
    f->mode = mode;
    if (ok) {
        *gpa = w.gpa | (linear & 0xFFF);
    } else {
        kind = f->fault;
        *error = f->error_code;
        *gpa = f->guest_physical;
    }
    f->fault = fault;
    f->error_code = error_code;
    f->qualification = qualification;
    f->guest_physical = guest_physical;
    return kind;
}

/* uc_cb_tlbevent_t: bool (*)(uc_engine *uc, uint64_t vaddr, uc_mem_type type,
 *                            uc_tlb_entry *result, void *user_data) */
bool hv_tlb_fill(void *uc, uint64_t vaddr, int type, struct uc_tlb_entry *entry, void *user_data)
{
    struct fill *f = user_data;
    uint64_t cr0 = 0;

    if (vaddr >= FOUR_GIB) {
        /* Only the CPU's own accesses reach here (a guest address has 32 bits): the monitor's
         * descriptor tables, read by a segment load or an iret, and emu_start's own lookup of
         * the code at its end address (hvsim's is far above 4 GiB), which asks for execute. */
        f->fills++;
        entry->paddr = vaddr;
        entry->perms = PROT_READ | PROT_WRITE | PROT_EXEC;
        return true;
    }
    if (f->mode != MODE_IDENTITY)
        return walk_fill(f, uc, vaddr, type, entry);
    if (f->reg_read(uc, f->cr0_regid, &cr0) != 0 || (cr0 & CR0_PG)) {
        f->paging = 1;          /* the CPU's walker must translate this: refuse, the monitor restarts */
        return false;
    }
    mark_executed(f, uc, vaddr, type);
    f->fills++;
    entry->paddr = vaddr;
    entry->perms = PROT_READ | PROT_WRITE | (executed(f, vaddr) ? PROT_EXEC : 0);
    return true;
}
