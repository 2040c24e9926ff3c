// Host compatibility header: lets the system C++ compiler (g++ -std=c++20) build the CUDA sources of this
// folder unchanged, so that CI runs every kernel on the CPU against the numpy oracle and under ASan/TSan.
//
// How a launch runs on the host (lgd::host::launch):
// - the blocks of the grid run one after another; a block's threads are std::threads (one per CUDA thread,
//   kept in a pool between launches: the products path launches four kernels per step), each with its own
//   threadIdx/blockIdx; launches from several host threads take turns;
// - __syncthreads is a barrier across the block's threads (acquire/release atomics: ThreadSanitizer
//   understands it, so a missing barrier shows up as a data race);
// - __shfl_down_sync / __shfl_xor_sync exchange through a per-warp buffer between two warp barriers (all 32
//   lanes must take part, as on the device with a full mask);
// - atomics are the compiler's __atomic builtins;
// - dynamic shared memory is one buffer per launch, filled with 0xff (NaN in every float type) before each
//   block so that a read of a slot nobody wrote shows up as NaN, and ASan sees reads past its end.
// Static __shared__ variables are not supported (the kernels use dynamic shared memory only).
#pragma once

#include <math.h>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline double __longlong_as_double(long long bits) {
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline long long __double_as_longlong(double value) {
    long long bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

inline float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline int atomicOr(int* address, int value) { return __atomic_fetch_or(address, value, __ATOMIC_RELAXED); }
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }

namespace lgd::host {

// A reusable barrier of `count` threads: an arrival counter and a generation, waiters yield the core
// (a block's threads outnumber the cores, so spinning without yielding would starve the last arrival).
// Acquire/release atomics: ThreadSanitizer sees the order a barrier gives, and nothing more.
class Barrier {
  public:
    explicit Barrier(int count) : count_(count) {}

    void wait() {
        const unsigned generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
            return;
        }
        while (generation_.load(std::memory_order_acquire) == generation) std::this_thread::yield();
    }

  private:
    const int count_;
    std::atomic<int> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

// What the threads of the running launch share.
struct Launch {
    unsigned char* shared = nullptr;
    Barrier* block = nullptr;
    std::vector<std::unique_ptr<Barrier>> warps;
    std::vector<unsigned long long> exchange;  // 32 slots per warp, for the shuffles
};

inline thread_local Launch* current = nullptr;

template <typename T> T shuffle(T value, int source_lane) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 64 bits");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    unsigned long long* slots = current->exchange.data() + 32 * warp;
    Barrier& barrier = *current->warps[warp];
    std::memcpy(&slots[lane], &value, sizeof(T));
    barrier.wait();
    T result;
    std::memcpy(&result, &slots[source_lane], sizeof(T));
    barrier.wait();  // every lane has read before any lane writes its next value
    return result;
}

// The threads of the launches: `run(count, job)` runs job(tid) for tid < count on `count` threads and returns
// when every one is done. The threads wait on a condition variable between launches (ThreadSanitizer sees
// the mutex's order); a launch of another block size starts a new set. A forked child (whose copy has no
// threads) gets a pool of its own.
class Pool {
  public:
    void run(unsigned count, const std::function<void(unsigned)>& job) {
        std::lock_guard<std::mutex> turn(launching_);  // one launch at a time
        std::unique_lock<std::mutex> lock(mutex_);
        if (workers_.size() != count) {
            stop(lock);
            const unsigned long long before = generation_;  // a new thread's first job is the next one
            for (unsigned tid = 0; tid < count; ++tid)
                workers_.emplace_back([this, tid, before] { work(tid, before); });
        }
        job_ = &job;
        pending_ = count;
        ++generation_;
        start_.notify_all();
        done_.wait(lock, [this] { return pending_ == 0; });
        job_ = nullptr;
    }

    // Joins the threads (a program that checks for leaked threads calls it before it returns).
    void shutdown() {
        std::lock_guard<std::mutex> turn(launching_);
        std::unique_lock<std::mutex> lock(mutex_);
        stop(lock);
    }

  private:
    void stop(std::unique_lock<std::mutex>& lock) {
        stopping_ = true;
        start_.notify_all();
        lock.unlock();
        for (std::thread& worker : workers_) worker.join();
        lock.lock();
        workers_.clear();
        stopping_ = false;
    }

    void work(unsigned tid, unsigned long long seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            const std::function<void(unsigned)>* job = job_;
            lock.unlock();
            (*job)(tid);
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::mutex launching_, mutex_;
    std::condition_variable start_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned pending_ = 0;
    unsigned long long generation_ = 0;
    bool stopping_ = false;
};

inline Pool& pool() {
    static Pool* shared = nullptr;
    static pid_t owner = 0;
    if (shared == nullptr || owner != getpid()) {  // a forked child leaves its parent's pool alone
        shared = new Pool();
        owner = getpid();
    }
    return *shared;
}

// Runs `body` (the kernel call, its arguments bound) on a grid of `grid` blocks of `block` threads with
// `shared_bytes` of dynamic shared memory. `block` must be a multiple of 32 (the warps of the shuffles).
template <typename Body> void launch(unsigned grid, unsigned block, size_t shared_bytes, Body body) {
    Launch state;
    std::vector<unsigned char> shared(shared_bytes > 0 ? shared_bytes : 1);
    Barrier barrier(static_cast<int>(block));
    state.shared = shared.data();
    state.block = &barrier;
    for (unsigned w = 0; w < (block + 31) / 32; ++w) state.warps.emplace_back(new Barrier(32));
    state.exchange.assign(32 * state.warps.size(), 0);
    const std::function<void(unsigned)> job = [&](unsigned tid) {
        current = &state;
        threadIdx.x = tid;
        blockDim.x = block;
        gridDim.x = grid;
        for (unsigned b = 0; b < grid; ++b) {
            blockIdx.x = b;
            if (tid == 0) std::memset(state.shared, 0xff, shared.size());
            barrier.wait();
            body();
            barrier.wait();
        }
        current = nullptr;
    };
    pool().run(block, job);
}

}  // namespace lgd::host

inline void __syncthreads() { lgd::host::current->block->wait(); }

template <typename T> T __shfl_down_sync(unsigned, T value, unsigned delta) {
    const unsigned lane = threadIdx.x % 32;
    return lgd::host::shuffle(value, lane + delta < 32 ? lane + delta : lane);
}

template <typename T> T __shfl_xor_sync(unsigned, T value, int mask) {
    return lgd::host::shuffle(value, static_cast<int>((threadIdx.x % 32) ^ mask));
}

#define LGD_DYNAMIC_SHARED() (lgd::host::current->shared)
