// The addon's engine, free of N-API: a PKCS#11 module handle and a fixed pool of worker threads,
// each owning one RW session, running AES-GCM jobs from a shared queue.
//
// Threading contract: Open, Submit, Close, CloseWorkerSessionsForTesting and the destructor are
// called from one thread (the JS thread); Stats from any thread. The completion callback runs on a
// worker thread, or on the closing thread for jobs that Close fails with kClosed.
#ifndef KMSD_NATIVE_GCM_POOL_H_
#define KMSD_NATIVE_GCM_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pkcs11_min.h"

namespace kmsd {

enum class GcmOp : uint8_t { kEncrypt, kDecrypt };

enum class JobStatus : uint8_t {
  kPending,      // not run yet
  kOk,           // out[0, outLen) holds the result
  kPkcs11Error,  // rv and function say what failed
  kClosed,       // the pool was closed before the job ran
  kInvalid,      // rejected by the caller's validation before submission (never queued)
};

// One AES-GCM operation. The submitter owns the memory of the job and of every buffer it points
// to, and must keep them alive and untouched until the completion callback has run for it.
struct Job {
  GcmOp op = GcmOp::kEncrypt;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  const uint8_t* iv = nullptr;  // 12 bytes
  const uint8_t* aad = nullptr;
  size_t aadLen = 0;
  const uint8_t* in = nullptr;
  size_t inLen = 0;
  uint8_t* out = nullptr;  // encrypt: inLen + 16 bytes; decrypt: inLen bytes (see gcm_pool.cc)
  size_t outCap = 0;
  void* owner = nullptr;  // the submitter's request, for the completion callback

  // Written by the pool before the completion callback.
  JobStatus status = JobStatus::kPending;
  size_t outLen = 0;
  CK_RV rv = CKR_OK;
  // Static string: the PKCS#11 function that failed or ran last (e.g. "C_Decrypt"); for kInvalid,
  // the submitter's validation message.
  const char* function = nullptr;
};

struct PoolStats {
  uint64_t encrypt;           // successful encryptions
  uint64_t decrypt;           // successful decryptions
  uint64_t sessionsReopened;  // worker sessions replaced after a session-level failure
  unsigned threads;
};

struct OpenError {
  std::string code;  // PKCS11_ERROR (rv says which), or MODULE_LOAD_FAILED
  std::string message;
  const char* function = nullptr;  // PKCS#11 function that failed, if any
  CK_RV rv = CKR_OK;
  bool hasRv = false;
};

// "rv 0x00000082": a return value in messages; its name comes from src/hsm/errors.ts.
std::string RvHex(CK_RV rv);

using JobCompletion = void (*)(Job* job, void* arg);

class GcmPool {
 public:
  // Loads the module, C_Initialize (tolerating CKR_CRYPTOKI_ALREADY_INITIALIZED), opens one session
  // per worker on `slot` and starts the workers. Returns null and fills *err on failure, leaving
  // nothing open.
  static std::unique_ptr<GcmPool> Open(const std::string& modulePath, CK_SLOT_ID slot, unsigned threads,
                                       JobCompletion onDone, void* onDoneArg, OpenError* err);

  ~GcmPool();  // Close(), then drops the module reference.
  GcmPool(const GcmPool&) = delete;
  GcmPool& operator=(const GcmPool&) = delete;

  // Queues the jobs (all or none). False when the pool is closed.
  bool Submit(Job* const* jobs, size_t count);

  // Idempotent. Stops accepting jobs, lets each worker finish the job in hand, fails the queued
  // ones with kClosed (through the completion callback, on this thread), joins the workers, which
  // close their sessions on the way out.
  void Close();

  bool closed() const { return closed_.load(std::memory_order_acquire); }
  PoolStats Stats() const;

  // Test hook: has every worker close its own session behind the back of its bookkeeping (as a
  // token reset or a module-side session reaper would) just before its next job, which then meets
  // CKR_SESSION_HANDLE_INVALID and goes through recovery. Done on the worker's thread because
  // closing a session that another thread is using is unsafe in some modules (SoftHSM frees it
  // under the caller). Returns the number of workers told.
  size_t CloseWorkerSessionsForTesting();

 private:
  class Worker;

  GcmPool(void* dl, CK_FUNCTION_LIST_PREFIX* fl, CK_SLOT_ID slot, JobCompletion onDone, void* onDoneArg);
  void WorkerLoop(Worker* w);
  bool PopJob(Job** job);
  void RunJob(Worker* w, Job* job);
  CK_RV RunOnce(CK_SESSION_HANDLE session, Job* job);
  CK_RV ReopenSession(Worker* w);

  void* const dl_;
  CK_FUNCTION_LIST_PREFIX* const fl_;
  const CK_SLOT_ID slot_;
  const JobCompletion onDone_;
  void* const onDoneArg_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;  // guarded by mu_
  std::atomic<bool> closed_{false};
  std::vector<std::unique_ptr<Worker>> workers_;

  std::atomic<uint64_t> encrypted_{0};
  std::atomic<uint64_t> decrypted_{0};
  std::atomic<uint64_t> reopened_{0};
};

}  // namespace kmsd

#endif  // KMSD_NATIVE_GCM_POOL_H_
