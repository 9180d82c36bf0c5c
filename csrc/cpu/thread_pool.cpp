// The CPU kernel's thread pool: the caller works, helpers join if they can (see cpu_kernel.h).
//
// Why not at::parallel_for (OpenMP): an OpenMP region ends in a barrier, so the caller waits until every
// worker thread has been scheduled and has finished its share. On a machine whose cores are busy with other
// processes a worker may wait a scheduler tick (milliseconds) before it runs; at batch 1 (17 blocks, each a
// fraction of a millisecond) MobileNetV2 ran ~10x slower on a loaded 2-core machine with 2 OpenMP threads
// than with 1. Here units are claimed from an atomic counter: a helper that is not running when the work is
// published finds nothing left when it wakes, and the caller never waited for it.
//
// Protocol (all atomics sequentially consistent):
//   caller: fill job fields; closed_ = false; ++epoch_ (wake sleepers); claim units; closed_ = true;
//           wait until active_ == 0.
//   helper: see a new epoch; ++active_; if closed_: --active_ (the job is gone) else claim units; --active_.
// A helper that increments active_ after the caller saw active_ == 0 must see closed_ == true (the caller
// stored it before loading active_), so it never touches a finished job.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MNV2_PAUSE() _mm_pause()
#else
#define MNV2_PAUSE() ((void)0)
#endif

namespace mnv2 {
namespace cpu {
namespace {

// How long an idle helper spins before it sleeps on the epoch (futex): long enough to bridge the Python
// work between two blocks of one forward, short enough not to steal a busy machine's cores.
// MNV2_CPU_SPIN=<iterations of _mm_pause> overrides (0: sleep at once).
int spin_iters() {
  static const int n = [] {
    const char* e = std::getenv("MNV2_CPU_SPIN");
    return (e && *e) ? std::max(0, std::atoi(e)) : 4000;  // ~0.1-0.3 ms of _mm_pause
  }();
  return n;
}

class Pool {
 public:
  void run(int64_t n, int nthreads, UnitFn fn, void* ctx) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
    if (nthreads <= 1 || n == 1 || in_helper_ || !lk.owns_lock()) {
      for (int64_t u = 0; u < n; ++u) fn(ctx, u);
      return;
    }
    ensure_helpers(nthreads - 1);
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    max_helpers_ = nthreads - 1;
    joined_.store(0);
    next_.store(0);
    closed_.store(false);
    epoch_.fetch_add(1);
    if (sleepers_.load() > 0) epoch_.notify_all();
    work();
    closed_.store(true);
    for (int spins = 0; active_.load() != 0; ++spins) {
      if (spins < 4096) MNV2_PAUSE();
      else sched_yield();
    }
  }

 private:
  void work() {
    for (int64_t u = next_.fetch_add(1); u < n_; u = next_.fetch_add(1)) fn_(ctx_, u);
  }

  void ensure_helpers(int want) {
    if (owner_pid_ != getpid()) {  // after fork(): the child has none of the parent's threads
      threads_.clear();             // (the std::thread objects are leaked on purpose: see below)
      active_.store(0);             // counts of the parent's helpers, which do not exist here
      sleepers_.store(0);
      owner_pid_ = getpid();
    }
    while ((int)threads_.size() < want) {
      // Detached and never joined: the pool lives until exit (a static destructor joining threads that
      // sleep in a futex would hang or crash at interpreter shutdown).
      threads_.push_back(new std::thread([this] { helper_loop(); }));
      threads_.back()->detach();
    }
  }

  void helper_loop() {
    in_helper_ = true;
    uint32_t seen = epoch_.load();
    const int kSpinIters = spin_iters();
    for (;;) {
      uint32_t e = epoch_.load();
      for (int i = 0; e == seen && i < kSpinIters; ++i) {
        MNV2_PAUSE();
        e = epoch_.load();
      }
      if (e == seen) {
        sleepers_.fetch_add(1);
        epoch_.wait(seen);
        sleepers_.fetch_sub(1);
        continue;
      }
      seen = e;
      active_.fetch_add(1);
      if (!closed_.load() && joined_.fetch_add(1) < max_helpers_) work();
      active_.fetch_sub(1);
    }
  }

  std::mutex mu_;  // one caller at a time; others run inline
  std::vector<std::thread*> threads_;
  pid_t owner_pid_ = getpid();
  UnitFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int max_helpers_ = 0;
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> joined_{0};
  std::atomic<int> active_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> closed_{true};
  static thread_local bool in_helper_;
};

thread_local bool Pool::in_helper_ = false;

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed (helpers may still be sleeping at exit)
  return *p;
}

}  // namespace

void parallel_units(int64_t n, int nthreads, UnitFn fn, void* ctx) { pool().run(n, nthreads, fn, ctx); }

namespace {
std::atomic<int64_t> g_split_pixels{-1};
}
int64_t split_max_pixels() {
  int64_t v = g_split_pixels.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* e = std::getenv("MNV2_CPU_SPLIT_PIXELS");
    // 7x7 inputs: there the split beat two row bands (1.42x vs 1.28x of one thread on MobileNetV2's 160 ->
    // 960 -> 160 block, idle machine; 1.12x vs 0.92x with a busy core); at 14x14 the bands won (1.33-1.46x vs
    // 0.93-1.28x): the phase-B reads of D cross cores (docs/cpu_runtime.md, issue 14)
    v = (e && *e) ? std::max<int64_t>(0, std::atoll(e)) : 49;
    g_split_pixels.store(v);
  }
  return v;
}
int64_t set_split_max_pixels(int64_t pixels) {
  const int64_t prev = split_max_pixels();
  g_split_pixels.store(std::max<int64_t>(0, pixels));
  return prev;
}

}  // namespace cpu
}  // namespace mnv2
