// The emulator's scheduler and its C entry points (see emu.hpp). Compiled in the same
// translation unit as the kernels, so the kernels' registrations are linked in whenever the
// entry points are.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>

// Switching fibers. On x86-64 a hand-written switch saves the callee-saved registers and the
// floating-point control words and swaps stacks: no system call, unlike swapcontext (which
// saves the signal mask each time), so barrier-heavy kernels run tens of times faster.
// Elsewhere, ucontext.
#if ARTIST_EMU_ASM_SWITCH
extern "C" void artist_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl artist_emu_switch
    .type artist_emu_switch, @function
artist_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size artist_emu_switch, .-artist_emu_switch
)");
#endif

namespace emu {

thread_local Fiber* current = nullptr;
thread_local Block* block = nullptr;

std::map<std::string, Entry>& registry() {
    static std::map<std::string, Entry> r;
    return r;
}

namespace {

constexpr size_t kStack = 64 * 1024;
constexpr size_t kGuard = 4096;
constexpr unsigned kMaxThreads = 1024;

struct Launch {
    const char* name;
    const Entry* entry;
    void** args;
};

struct Stacks {
    unsigned char* base = nullptr;
    size_t count = 0;
    ~Stacks() {
        if (base) munmap(base, count * (kStack + kGuard));
    }
    // Stacks for `n` fibers, each above a guard page, so an overflow faults instead of
    // silently writing into the neighbour's stack.
    bool ensure(size_t n) {
        if (n <= count) return true;
        if (base) munmap(base, count * (kStack + kGuard));
        size_t bytes = n * (kStack + kGuard);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            base = nullptr;
            count = 0;
            return false;
        }
        base = static_cast<unsigned char*>(p);
        count = n;
        for (size_t i = 0; i < n; ++i) mprotect(base + i * (kStack + kGuard), kGuard, PROT_NONE);
        return true;
    }
    unsigned char* stack(size_t i) { return base + i * (kStack + kGuard) + kGuard; }
};

// Dynamic shared memory: a thread's buffer that ends where an inaccessible page starts, so
// a kernel that reads or writes past the dynamic shared memory it was launched with faults
// (as a GPU's would raise an illegal address), instead of touching the heap.
struct GuardedSmem {
    unsigned char* base = nullptr;
    size_t capacity = 0;  // bytes before the guard page
    size_t page = 0;
    ~GuardedSmem() {
        if (base) munmap(base, capacity + page);
    }
    // What a launch asking for `bytes` gets: at least 16, a multiple of 16.
    static size_t rounded(size_t bytes) { return std::max<size_t>(16, (bytes + 15) & ~size_t(15)); }
    // rounded(bytes) of memory ending at the guard page; null when no memory could be mapped.
    unsigned char* get(size_t bytes) {
        if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t need = rounded(bytes);
        if (need > capacity) {
            if (base) munmap(base, capacity + page);
            base = nullptr;
            const size_t cap = (need + page - 1) / page * page;
            void* p = mmap(nullptr, cap + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return nullptr;
            base = static_cast<unsigned char*>(p);
            capacity = cap;
            mprotect(base + capacity, page, PROT_NONE);
        }
        return base + capacity - need;
    }
};

thread_local const Launch* running = nullptr;
thread_local GuardedSmem guarded_smem;
thread_local std::vector<Fiber> fibers;
thread_local Stacks stacks;
// Whether the launch being run goes last first: its blocks, the warps of each block and the
// lanes of each warp (artist_emu_launch's `reverse`).
thread_local bool reversed = false;
// When the launch being run must have ended (the clock's maximum for never): a kernel that
// loops forever through barriers fails instead of hanging; one that spins without a barrier
// still hangs.
thread_local std::chrono::steady_clock::time_point deadline;
thread_local unsigned deadline_ticks = 0;
thread_local bool timed_out = false;

// Whether the deadline has passed, looking at the clock every 16th call (a call per barrier
// round) and true from then on.
bool past_deadline() {
    if (timed_out) return true;
    if (++deadline_ticks & 15u) return false;
    timed_out = std::chrono::steady_clock::now() > deadline;
    return timed_out;
}

// The next thread to run when `me` stops in state `s`, without going back to the scheduler
// when the scheduler would run it next: the next lane of `me`'s warp that has yet to reach
// the barrier (lanes run in order: ascending, or descending when `reversed`), or, once
// every live lane of the warp waits at a warp barrier, the first of them, all released.
// Null when the scheduler decides (the warp is done or waits at __syncthreads, or its lanes
// are stuck at different barriers), or when `me` itself runs on.
Fiber* next_in_warp(Fiber* me, State s) {
    const dim3 d = block->dim;
    const unsigned lo = me->linear & ~31u, hi = std::min(d.x * d.y * d.z, lo + 32);
    const unsigned lanes = hi - lo, at = me->linear - lo;
    // The i-th lane to run of this warp.
    auto lane = [&](unsigned i) -> Fiber& { return fibers[lo + (reversed ? lanes - 1 - i : i)]; };
    const unsigned pos = reversed ? lanes - 1 - at : at;
    for (unsigned i = pos + 1; i < lanes; ++i)
        if (lane(i).state == READY) return &lane(i);
    if (s != AT_WARP || past_deadline()) return nullptr;  // the scheduler reports a timeout
    Fiber* first = nullptr;
    for (unsigned i = 0; i < lanes; ++i) {
        Fiber& f = lane(i);
        if (f.state == DONE) continue;
        if (f.state != AT_WARP) return nullptr;
        if (!first) first = &f;
        f.state = READY;
    }
    return first;
}

#if ARTIST_EMU_ASM_SWITCH
thread_local void* scheduler_sp = nullptr;
void switch_to(Fiber* me, Fiber* next) { artist_emu_switch(&me->sp, next->sp); }
void to_scheduler(Fiber* me) { artist_emu_switch(&me->sp, scheduler_sp); }
void run_fiber(Fiber& f) { artist_emu_switch(&scheduler_sp, f.sp); }
#else
thread_local ucontext_t scheduler;
void switch_to(Fiber* me, Fiber* next) { swapcontext(&me->ctx, &next->ctx); }
void to_scheduler(Fiber* me) { swapcontext(&me->ctx, &scheduler); }
void run_fiber(Fiber& f) { swapcontext(&scheduler, &f.ctx); }
#endif

// Stops the current thread in state `s` and runs the next one: straight from lane to lane
// within a warp (one switch per lane and barrier rather than two), through the scheduler
// otherwise.
void yield(State s) {
    Fiber* me = current;
    me->state = s;
    Fiber* next = next_in_warp(me, s);
    if (next == me) return;  // the only live lane of its warp, released: it runs on
    if (next) {
        current = next;
        switch_to(me, next);
    } else {
        to_scheduler(me);
    }
}

[[noreturn]] void fiber_main() {
    running->entry->invoke(running->entry->fn, running->args);
    yield(DONE);  // never resumed
    __builtin_unreachable();
}

#if ARTIST_EMU_ASM_SWITCH
// A fresh stack that `artist_emu_switch` "returns" into fiber_main from: the saved control
// words and six callee-saved registers, then fiber_main's address and a dummy return
// address above it (so fiber_main starts with the stack aligned as after a call).
void start_fiber(Fiber& f, unsigned char* stack, size_t size) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                         // fiber_main's return address
    *--sp = reinterpret_cast<void*>(&fiber_main);            // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = nullptr;             // rbp rbx r12 r13 r14 r15
    unsigned control[2] = {0x1f80u, 0x037fu};                // MXCSR, x87 control word
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    *--sp = nullptr;
    std::memcpy(sp, &control[0], 4);
    std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &control[1], 2);
    f.sp = sp;
}
#else
void start_fiber(Fiber& f, unsigned char* stack, size_t size) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
}
#endif

// Runs every thread of the current block to completion. False (with `err` set) when the
// threads wait at barriers that cannot all be reached.
bool run_block(unsigned n, std::string& err) {
    const dim3 d = block->dim;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        f.linear = t;
        f.idx = uint3{t % d.x, (t / d.x) % d.y, t / (d.x * d.y)};
        f.state = READY;
        f.exchanges = 0;
        if (t % 32 == 0) block->slots[kSlotsPerWarp * (t / 32) + kResultsFor] = 0;  // no butterfly yet
        f.copies.clear();
        f.groups.clear();
        f.wgmma_ops.clear();
        f.wgmma_groups.clear();
        // Each stack's top 128 bytes further down than the last lane's: the stacks are a
        // multiple of 4 KiB apart, and tops at one page offset would share a set of the L1
        // cache, evicting one another at every switch.
        start_fiber(f, stacks.stack(t), kStack - 128 * (t % 32));
    }
    const unsigned warps = (n + 31) / 32;
    for (;;) {
        // Warp by warp, each as far as it can go before the block's next barrier: its lanes
        // run, are released at each warp-level barrier they all reach, and run again, until
        // every live lane waits at __syncthreads (or is stuck). So one warp runs ahead of the
        // others between block barriers, as it may on a GPU, and a kernel that overwrites
        // shared memory another warp has yet to read, with no barrier between, shows it.
        // Reversed, the last warp runs first, and a race shows the other way round.
        unsigned live = 0, at_block = 0;
        for (unsigned wi = 0; wi < warps; ++wi) {
            const unsigned w = reversed ? warps - 1 - wi : wi;
            const unsigned lo = w * 32, hi = std::min(n, w * 32 + 32);
            for (;;) {
                for (unsigned i = 0; i < hi - lo; ++i) {
                    Fiber& f = fibers[reversed ? hi - 1 - i : lo + i];
                    if (f.state == READY) {
                        current = &f;
                        run_fiber(f);
                    }
                }
                current = nullptr;
                unsigned wl = 0, ww = 0;
                for (unsigned t = lo; t < hi; ++t) {
                    if (fibers[t].state != DONE) ++wl;
                    if (fibers[t].state == AT_WARP) ++ww;
                }
                if (past_deadline()) {
                    char buf[200];
                    snprintf(buf, sizeof buf,
                             "block (%u, %u, %u) still running when the launch's time ran out "
                             "(ARTIST_EMU_TIMEOUT): a kernel that does not end?",
                             block->idx.x, block->idx.y, block->idx.z);
                    err = buf;
                    return false;
                }
                if (wl == 0 || ww != wl) break;
                for (unsigned t = lo; t < hi; ++t)
                    if (fibers[t].state == AT_WARP) fibers[t].state = READY;
            }
            for (unsigned t = lo; t < hi; ++t) {
                if (fibers[t].state != DONE) ++live;
                if (fibers[t].state == AT_BLOCK) ++at_block;
            }
        }
        if (live == 0) {
            for (unsigned t = 0; t < n; ++t) {
                if (!fibers[t].wgmma_ops.empty()) {
                    char buf[160];
                    snprintf(buf, sizeof buf, "block (%u, %u, %u): thread %u ended with %zu wgmma products not waited for",
                             block->idx.x, block->idx.y, block->idx.z, t, fibers[t].wgmma_ops.size());
                    err = buf;
                    return false;
                }
            }
            return true;
        }
        if (at_block == live) {
            for (unsigned t = 0; t < n; ++t)
                if (fibers[t].state == AT_BLOCK) fibers[t].state = READY;
            continue;
        }
        char buf[256];
        snprintf(buf, sizeof buf,
                 "block (%u, %u, %u): %u live threads, %u at __syncthreads, the rest at a warp-level "
                 "barrier: a barrier not reached by every thread (divergent __syncthreads or shuffle)",
                 block->idx.x, block->idx.y, block->idx.z, live, at_block);
        err = buf;
        return false;
    }
}

// Faults. Device memory is host memory between guard pages (crates/tensor/src/cuda/
// emulator.rs), and each fiber's stack sits above one, so a kernel's access past the end of
// a buffer, or a too deep stack, faults. The handler names the kernel, block and thread
// that faulted on standard error, then hands the fault on to the handler it replaced
// (Rust's stack-overflow check, or the default), which ends the process.
struct sigaction previous_segv, previous_bus;

void on_fault(int sig, siginfo_t* info, void*) {
    if (running && block && current) {
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "\nCUDA emulator: kernel %s, block (%u, %u, %u), thread %u: %s at %p, outside every "
                         "buffer (an access past the end of one or of the dynamic shared memory, or a fiber's "
                         "stack overflowing)\n",
                         running->name, block->idx.x, block->idx.y, block->idx.z, current->linear,
                         sig == SIGSEGV ? "segmentation fault" : "bus error", info ? info->si_addr : nullptr);
        if (n > 0) {
            ssize_t w = write(2, buf, (size_t)std::min(n, (int)sizeof buf - 1));
            (void)w;
        }
    }
    sigaction(sig, sig == SIGSEGV ? &previous_segv : &previous_bus, nullptr);
    // Returning runs the faulting access again, under the previous handler.
}

void install_fault_handler() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;  // the thread's alternate stack, if it has one
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
    sigaction(SIGBUS, &sa, &previous_bus);
}

void set_err(char* err, size_t len, const std::string& msg) {
    if (err && len) {
        size_t n = std::min(len - 1, msg.size());
        std::memcpy(err, msg.data(), n);
        err[n] = 0;
    }
}

}  // namespace

void syncthreads() { yield(AT_BLOCK); }
void warp_barrier() { yield(AT_WARP); }
unsigned char* dynamic_smem() { return block->dyn_smem; }

// Where a cp.async copy lands: at the wait that covers it (false, the default: a tile read
// before its wait holds stale data), or at once (true: a copy into a buffer that other
// threads still read, issued before the barrier that says they are done, corrupts it).
// A GPU lands it anywhere between the two, so the tests run kernels both ways.
thread_local bool eager_copies = false;

void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    AsyncCopy c{dst, src, bytes, std::min(src_bytes, bytes)};
    if (eager_copies) {
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
        return;
    }
    current->copies.push_back(c);
}

void cp_async_commit() { current->groups.push_back(current->copies.size()); }

// The copies of every committed group but the newest `pending` land now, in the order they
// were started; the rest stay in flight.
void cp_async_wait(unsigned pending) {
    Fiber& f = *current;
    if (f.groups.size() <= pending) return;
    size_t land = f.groups[f.groups.size() - pending - 1];
    for (size_t i = 0; i < land; ++i) {
        const AsyncCopy& c = f.copies[i];
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    f.copies.erase(f.copies.begin(), f.copies.begin() + (std::ptrdiff_t)land);
    f.groups.erase(f.groups.begin(), f.groups.end() - pending);
    for (size_t& g : f.groups) g -= land;
}

void wgmma_defer(std::function<void()> op) { current->wgmma_ops.push_back(std::move(op)); }

void wgmma_commit() { current->wgmma_groups.push_back(current->wgmma_ops.size()); }

// The products of every committed group but the newest `pending` run now, in issue order.
void wgmma_wait(unsigned pending) {
    Fiber& f = *current;
    if (f.wgmma_groups.size() <= pending) return;
    size_t run = f.wgmma_groups[f.wgmma_groups.size() - pending - 1];
    // Taken out first: a product never issues another.
    std::vector<std::function<void()>> ops(std::make_move_iterator(f.wgmma_ops.begin()),
                                           std::make_move_iterator(f.wgmma_ops.begin() + (std::ptrdiff_t)run));
    f.wgmma_ops.erase(f.wgmma_ops.begin(), f.wgmma_ops.begin() + (std::ptrdiff_t)run);
    f.wgmma_groups.erase(f.wgmma_groups.begin(), f.wgmma_groups.end() - pending);
    for (size_t& g : f.wgmma_groups) g -= run;
    for (auto& op : ops) op();
}

}  // namespace emu

extern "C" {

// Runs kernel `name` over `grid` blocks of `block_dim` threads with `smem` bytes of dynamic
// shared memory. `args[i]` points at the i-th argument's value, which is `sizes[i]` bytes:
// each is checked against the kernel's own parameter sizes. Blocks, the warps of a block
// and the lanes of a warp run by ascending index, or descending where `reverse` is nonzero.
// A launch still running after `timeout_s` seconds (none when 0) fails at its next barrier.
// Returns 0, or -1 with `err`.
int artist_emu_launch(const char* name, const unsigned* grid, const unsigned* block_dim, unsigned smem,
                      void** args, const size_t* sizes, size_t nargs, int reverse, double timeout_s, char* err,
                      size_t err_len) {
    auto& reg = emu::registry();
    auto it = reg.find(name);
    if (it == reg.end()) {
        emu::set_err(err, err_len, std::string("no kernel named ") + name);
        return -1;
    }
    const emu::Entry& e = it->second;
    if (nargs != e.sizes.size()) {
        emu::set_err(err, err_len,
                     std::string(name) + " takes " + std::to_string(e.sizes.size()) + " arguments, " +
                         std::to_string(nargs) + " given");
        return -1;
    }
    for (size_t i = 0; i < nargs; ++i) {
        if (sizes[i] != e.sizes[i]) {
            emu::set_err(err, err_len,
                         std::string(name) + ": argument " + std::to_string(i) + " is " +
                             std::to_string(e.sizes[i]) + " bytes in the kernel, " + std::to_string(sizes[i]) +
                             " bytes given");
            return -1;
        }
    }
    unsigned n = block_dim[0] * block_dim[1] * block_dim[2];
    if (n == 0 || n > emu::kMaxThreads) {
        emu::set_err(err, err_len, std::string(name) + ": " + std::to_string(n) + " threads per block");
        return -1;
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) {
        emu::set_err(err, err_len, std::string(name) + ": empty grid");
        return -1;
    }
    if (emu::running != nullptr) {
        emu::set_err(err, err_len, std::string(name) + ": launched from inside a kernel");
        return -1;
    }
    if (!emu::stacks.ensure(n)) {
        emu::set_err(err, err_len, "could not map fiber stacks");
        return -1;
    }
    if (emu::fibers.size() < n) emu::fibers.resize(n);
    // Dynamic shared memory starts as all-ones bytes (NaN for floats), as unpredictable as
    // a GPU's: a kernel that reads what it did not write shows it.
    unsigned char* dyn = emu::guarded_smem.get(smem);
    if (!dyn) {
        emu::set_err(err, err_len, std::string(name) + ": could not map dynamic shared memory");
        return -1;
    }
    const size_t dyn_bytes = emu::GuardedSmem::rounded(smem);
    std::vector<unsigned long long> slots(emu::kSlotsPerWarp * ((n + 31) / 32), 0);
    static const bool handler = (emu::install_fault_handler(), true);
    (void)handler;
    emu::Launch launch{name, &e, args};
    emu::Block b;
    b.dim = dim3{block_dim[0], block_dim[1], block_dim[2]};
    b.grid = dim3{grid[0], grid[1], grid[2]};
    b.dyn_smem = dyn;
    b.slots = slots.data();
    emu::running = &launch;
    emu::block = &b;
    std::string msg;
    bool ok = true;
    const unsigned long long blocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    emu::reversed = reverse != 0;
    emu::timed_out = false;
    emu::deadline = timeout_s > 0 ? std::chrono::steady_clock::now() +
                                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                            std::chrono::duration<double>(std::min(timeout_s, 1e9)))
                                  : std::chrono::steady_clock::time_point::max();
    for (unsigned long long i = 0; ok && i < blocks; ++i) {
        const unsigned long long k = emu::reversed ? blocks - 1 - i : i;
        b.idx = uint3{(unsigned)(k % grid[0]), (unsigned)(k / grid[0] % grid[1]), (unsigned)(k / grid[0] / grid[1])};
        std::memset(dyn, 0xff, dyn_bytes);
        ok = emu::run_block(n, msg);
    }
    emu::running = nullptr;
    emu::block = nullptr;
    if (!ok) {
        emu::set_err(err, err_len, std::string(name) + ": " + msg);
        return -1;
    }
    return 0;
}

// cp.async copies launched from this thread land at once (nonzero) or at their wait (0).
void artist_emu_set_eager_copies(int eager) { emu::eager_copies = eager != 0; }

size_t artist_emu_kernel_count() { return emu::registry().size(); }

// The name of the i-th registered kernel (sorted), or null.
const char* artist_emu_kernel_name(size_t i) {
    auto& reg = emu::registry();
    if (i >= reg.size()) return nullptr;
    auto it = reg.begin();
    std::advance(it, i);
    return it->first.c_str();
}

}  // extern "C"
