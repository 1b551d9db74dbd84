// Runs flora's CUDA kernels (`kernels.cu`) on the CPU, for the tests of machines without a GPU
// (`kernel_emulator.rs` compiles this header, the kernels and a generated launcher with the
// system's C++ compiler).
//
// The execution model is CUDA's: a grid of blocks, each of blockDim threads. Blocks run one after
// another; the threads of a block are fibers (ucontext) on one OS thread, switched at every
// barrier, so a run is deterministic and needs no locks. `__syncthreads` waits for every
// running thread of the block, a warp shuffle for every running lane of the warp (threads that
// returned stop counting, as on the card). `__shared__` variables are function statics, shared
// by the threads of the one block that runs, in one section that is poisoned (every byte 0xff)
// as each block starts, so a read of shared memory that no thread of the block wrote shows.
// Barriers in code that not all threads reach alike (undefined in CUDA: a hang or a silent
// mix-up on the card) are reported as errors: threads of one phase waiting at different source
// lines, or waiting for threads that never come.
//
// Races between threads that no barrier orders: a fiber runs until it waits, so such a race
// resolves the same way in every run of one schedule. `schedule` runs the block's threads (and
// the grid's blocks) in reverse order instead, which reverses the order of every two threads
// between two barriers, and a warp at a time, which lets a warp run ahead of the others past its
// shuffles; `kernel_emulator.rs` runs each launch both ways and reports a result that differs.
// What it cannot find: out-of-bounds reads that happen to land in mapped memory, races whose two
// orders give the same bytes, and anything about speed.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct float2 {
  float x, y;
};

inline float2 make_float2(float x, float y) { return {x, y}; }

#define __global__
#define __device__
#define __forceinline__ inline
// Every `__shared__` variable sits in one section, whose bounds the linker gives, so that each
// block starts with its shared memory poisoned (see `run`).
#define __shared__ static __attribute__((section("flora_shared")))
extern "C" char __start_flora_shared[], __stop_flora_shared[];
#define __restrict__

namespace flora_emu {

// A barrier over the threads (or a warp's lanes) still running.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t phase = 0;
  // The source line where this phase's first thread waits; the others must wait there too.
  int line = 0;
  void release() {
    arrived = 0;
    phase++;
  }
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 index;
  bool done = false;
  Barrier *waiting = nullptr;
  uint64_t wait_phase = 0;
};

// A warp's lanes exchange values through `slots`, alternating between its two rows by
// shuffle: a lane writes the next shuffle's row only after every lane has read the last one
// (they read before waiting at the next barrier), so one barrier per shuffle suffices.
struct Warp {
  Barrier barrier;
  uint64_t slots[2][32];
};

struct Launch {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block;
  int current = 0;
  void (*body)(void *) = nullptr;
  void *closure = nullptr;
  // The first barrier reached from two places in one phase, described.
  std::string divergence;
};

inline Launch *active = nullptr;

// The order fibers run in: the block's threads in reverse with `kReverseThreads`, the grid's
// blocks in reverse with `kReverseBlocks`, both in index order without; with `kWarpAtATime`,
// each warp in turn runs until its lanes wait at a block-wide barrier (or return), through its
// shuffles, before the next warp runs, as a warp can run ahead of the others on a card.
constexpr unsigned kReverseThreads = 1, kReverseBlocks = 2, kWarpAtATime = 4;
inline unsigned schedule = 0;

// Whether the launch made an atomic add: across blocks, those run in an order that the card
// does not fix either.
inline bool atomics = false;

// Bytes of stack per thread.
constexpr size_t kStack = 64 * 1024;

}  // namespace flora_emu

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace flora_emu {

inline int linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// Waits at `b`, from source line `line` of the kernels, until every thread it counts has
// arrived. Threads of one phase must wait at the same line: CUDA leaves a barrier in code that
// the block's (or warp's) threads do not all reach undefined.
inline void wait_at(Barrier &b, const char *what, int line) {
  Launch &l = *active;
  Fiber &f = l.fibers[l.current];
  if (b.arrived == 0) {
    b.line = line;
  } else if (b.line != line && l.divergence.empty()) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "block (%u, %u, %u): thread (%u, %u, %u) waits at the %s on line %d while others "
             "wait at line %d",
             blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, what,
             line, b.line);
    l.divergence = msg;
  }
  if (++b.arrived == b.expected) {
    b.release();
    return;
  }
  f.waiting = &b;
  f.wait_phase = b.phase;
  swapcontext(&f.context, &l.scheduler);
}

// A thread that returned stops counting at its block's and warp's barriers.
inline void leave(Barrier &b) {
  b.expected--;
  if (b.arrived > 0 && b.arrived == b.expected) b.release();
}

inline void fiber_entry() {
  Launch &l = *active;
  l.body(l.closure);
  const int t = l.current;
  l.fibers[t].done = true;
  leave(l.block);
  leave(l.warps[t / 32].barrier);
  // uc_link returns to the scheduler.
}

// `v` from lane `src` of the warp (CUDA's `__shfl_sync` over the whole warp).
template <class T>
T shuffle_from(T v, int src, int line) {
  static_assert(sizeof(T) <= 8, "a shuffled value fits in 8 bytes");
  Launch &l = *active;
  const int t = linear_thread();
  Warp &w = l.warps[t / 32];
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  const int row = w.barrier.phase & 1;
  w.slots[row][t % 32] = bits;
  wait_at(w.barrier, "warp shuffle", line);
  const uint64_t theirs = w.slots[row][src & 31];
  T out;
  memcpy(&out, &theirs, sizeof(T));
  return out;
}

// `v` from lane `lane ^ mask` (CUDA's `__shfl_xor_sync` over the whole warp).
template <class T>
T shuffle_xor(T v, int mask, int line) {
  return shuffle_from(v, (linear_thread() % 32) ^ mask, line);
}

// Runs `body(closure)` as every thread of every block of `grid` x `block`. Returns 0, or 1 with
// a message in `err` when threads of a block wait at barriers the others never reach or wait at
// one barrier from different lines.
inline int run(dim3 grid, dim3 block, void (*body)(void *), void *closure, char *err,
               size_t err_len) {
  Launch l;
  l.body = body;
  l.closure = closure;
  const int threads = block.x * block.y * block.z;
  const int warps = (threads + 31) / 32;
  l.fibers.resize(threads);
  l.warps.resize(warps);
  // Stacks are left unwritten until used: a launch of 1,024 threads maps 64 MiB but touches little.
  for (auto &f : l.fibers) f.stack.reset(new char[kStack]);
  Launch *outer = active;
  active = &l;
  gridDim = grid;
  blockDim = block;
  int status = 0;
  atomics = false;
  const size_t blocks = (size_t)grid.x * grid.y * grid.z;
  for (size_t k = 0; k < blocks && status == 0; k++) {
    const size_t b = schedule & kReverseBlocks ? blocks - 1 - k : k;
    const unsigned bx = b % grid.x, by = (b / grid.x) % grid.y;
    const unsigned bz = b / ((size_t)grid.x * grid.y);
    // A block finds no values in shared memory: on a card it holds what the last block on the
    // SM left there. Poison (every byte 0xff: NaN as a float, -1 as an integer) makes a read of
    // an element that no thread of this block wrote visible, and differ between the schedules
    // where it is a race.
    memset(__start_flora_shared, 0xff, __stop_flora_shared - __start_flora_shared);
    l.block = Barrier{threads, 0, 0};
    for (int w = 0; w < warps; w++) {
      const int lanes = threads - 32 * w < 32 ? threads - 32 * w : 32;
      l.warps[w].barrier = Barrier{lanes, 0, 0};
    }
    for (int t = 0; t < threads; t++) {
      Fiber &f = l.fibers[t];
      f.done = false;
      f.waiting = nullptr;
      f.index = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &l.scheduler;
      makecontext(&f.context, fiber_entry, 0);
    }
    int running = threads;
    // Runs thread t until it waits or returns, if it can run: whether it ran.
    auto resume = [&](int t) {
      Fiber &f = l.fibers[t];
      if (f.done) return false;
      if (f.waiting && f.waiting->phase == f.wait_phase) return false;
      f.waiting = nullptr;
      l.current = t;
      threadIdx = f.index;
      blockIdx = {bx, by, bz};
      swapcontext(&l.scheduler, &f.context);
      if (f.done) running--;
      return true;
    };
    // Threads first..last in order (or in reverse), each until it waits, over and over while
    // `repeat` and one of them ran: whether one ran.
    auto pass = [&](int first, int last, bool repeat) {
      bool ran = false, again = true;
      while (again) {
        again = false;
        for (int n = first; n <= last; n++)
          again |= resume(schedule & kReverseThreads ? last - (n - first) : n);
        ran |= again;
        again &= repeat;
      }
      return ran;
    };
    while (running > 0) {
      bool progressed = false;
      if (schedule & kWarpAtATime) {
        for (int n = 0; n < warps; n++) {
          const int w = schedule & kReverseThreads ? warps - 1 - n : n;
          progressed |= pass(32 * w, std::min(32 * w + 31, threads - 1), true);
        }
      } else {
        progressed = pass(0, threads - 1, false);
      }
      if (!progressed) {
        int stuck = 0;
        for (auto &f : l.fibers) stuck += !f.done;
        snprintf(err, err_len,
                 "block (%u, %u, %u): %d of %d threads wait at a barrier that the others "
                 "never reach",
                 bx, by, bz, stuck, threads);
        status = 1;
        break;
      }
    }
    if (status == 0 && !l.divergence.empty()) {
      snprintf(err, err_len, "%s", l.divergence.c_str());
      status = 1;
    }
  }
  active = outer;
  return status;
}

// Calls kernel `k` with the arguments that `args` points to, as cuLaunchKernel does.
template <class... A, size_t... I>
void call(void (*k)(A...), void **args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_reference_t<A> *>(args[I])...);
}

// The type of a kernel's parameter as the launcher's callers spell it: a pointer, int, unsigned,
// unsigned long long, float or double.
template <class T>
constexpr char tag_of() {
  if constexpr (std::is_pointer_v<T>) return 'p';
  if constexpr (std::is_same_v<T, int>) return 'i';
  if constexpr (std::is_same_v<T, unsigned>) return 'u';
  if constexpr (std::is_same_v<T, unsigned long long>) return 'U';
  if constexpr (std::is_same_v<T, float>) return 'f';
  if constexpr (std::is_same_v<T, double>) return 'd';
  return '?';
}

// Launches kernel `k` (called `name`) over grid `g` and block `b` with the arguments `args`
// points to, whose types `tags` spells. Returns 0, 1 for a barrier some threads never reach, or
// 3 when the arguments do not match the kernel's parameters; the message in `err`.
template <class... A>
int launch(void (*k)(A...), const char *name, const unsigned *g, const unsigned *b,
           const char *tags, void **args, char *err, size_t err_len) {
  const char expected[] = {tag_of<A>()..., '\0'};
  if (strcmp(expected, tags) != 0) {
    snprintf(err, err_len, "kernel %s takes arguments typed \"%s\", given \"%s\"", name,
             expected, tags);
    return 3;
  }
  struct Closure {
    void (*k)(A...);
    void **args;
  } c{k, args};
  auto body = [](void *p) {
    auto *c = static_cast<Closure *>(p);
    call(c->k, c->args, std::index_sequence_for<A...>{});
  };
  return run(dim3{g[0], g[1], g[2]}, dim3{b[0], b[1], b[2]}, body, &c, err, err_len);
}

}  // namespace flora_emu

// CUDA's device functions that the kernels use. The barriers are macros, so that they know
// their line.
#define __syncthreads() flora_emu::wait_at(flora_emu::active->block, "__syncthreads", __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) flora_emu::shuffle_xor((v), (lane_mask), __LINE__)
#define __shfl_sync(mask, v, src) flora_emu::shuffle_from((v), (src), __LINE__)
#define __align__(n) __attribute__((aligned(n)))
inline float atomicAdd(float *p, float v) {
  flora_emu::atomics = true;
  const float old = *p;
  *p = old + v;
  return old;
}
inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  memcpy(&i, &f, 4);
  return i;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  memcpy(&u, &f, 4);
  return u;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// The card's fast exponential: 2^(x log2 e) by its approximate ex2, here by exp2f.
inline float __expf(float x) { return exp2f(x * 1.44269504088896341f); }
// CUDA's 16-byte vector type, and the 16-byte accesses `kernels.cu` makes with it (on the card one
// instruction, here a copy, which the C++ aliasing rules allow where a cast would not).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 load16(const void *p) {
  uint4 v;
  memcpy(&v, p, 16);
  return v;
}
inline void store16(void *p, uint4 v) { memcpy(p, &v, 16); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
