#include "gcm_pool.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

namespace kmsd {

namespace {

// Live pools, for the exit handler below. Heap-allocated and never freed so that they are still
// usable while exit() runs static destructors.
std::mutex& LivePoolsMutex() {
  static auto* mu = new std::mutex();
  return *mu;
}
std::set<GcmPool*>& LivePools() {
  static auto* pools = new std::set<GcmPool*>();
  return *pools;
}
std::atomic<bool> gExiting{false};

// process.exit() does not run N-API cleanup hooks: it goes straight to exit(), whose static
// destructors tear down the PKCS#11 module (SoftHSM's singletons) while our workers may be inside
// it. This handler, registered after the module was loaded and so run before its destructors,
// stops the workers first. Results are dropped: nothing can receive them any more.
void StopPoolsAtExit() {
  gExiting.store(true, std::memory_order_release);
  std::set<GcmPool*> pools;
  {
    std::lock_guard<std::mutex> lock(LivePoolsMutex());
    pools.swap(LivePools());
  }
  for (GcmPool* pool : pools) pool->Close();
}

void RegisterLivePool(GcmPool* pool) {
  static std::once_flag registered;
  std::call_once(registered, [] { std::atexit(StopPoolsAtExit); });
  std::lock_guard<std::mutex> lock(LivePoolsMutex());
  LivePools().insert(pool);
}

void UnregisterLivePool(GcmPool* pool) {
  std::lock_guard<std::mutex> lock(LivePoolsMutex());
  LivePools().erase(pool);
}

constexpr CK_ULONG kIvBytes = 12;
constexpr CK_ULONG kTagBits = 128;

// Some modules (SoftHSM among them) reject a NULL data pointer even with a zero length, so empty
// inputs point here instead. Never written: an empty output cannot happen (the tag is 16 bytes) and
// decrypt outputs are at least as large as their input.
CK_BYTE kEmpty[1] = {0};

CK_BYTE_PTR NonNull(const uint8_t* p) { return p != nullptr ? const_cast<CK_BYTE_PTR>(p) : kEmpty; }

// The session is gone (closed behind our back, token reset or removed): a new one may succeed.
bool SessionLost(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_DEVICE_REMOVED;
}

}  // namespace

std::string RvHex(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rv 0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

// A worker thread and the session it alone uses.
class GcmPool::Worker {
 public:
  explicit Worker(CK_SESSION_HANDLE s) : session(s) {}
  std::thread thread;
  CK_SESSION_HANDLE session;
  bool hasSession = true;                  // false after a failed reopen; the next job tries again
  std::atomic<bool> dropSession{false};    // test hook, see CloseWorkerSessionsForTesting
};

std::unique_ptr<GcmPool> GcmPool::Open(const std::string& modulePath, CK_SLOT_ID slot, unsigned threads,
                                       JobCompletion onDone, void* onDoneArg, OpenError* err) {
  // Same path as pkcs11js loads: the dynamic loader hands back the already-loaded instance, so the
  // login state of the JS side's session is shared with ours. Our own reference keeps the module
  // mapped even if the JS side unloads it first.
  void* dl = dlopen(modulePath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (dl == nullptr) {
    const char* why = dlerror();
    err->code = "MODULE_LOAD_FAILED";
    err->message = std::string("cannot load PKCS#11 module: ") + (why != nullptr ? why : modulePath);
    return nullptr;
  }
  auto getFunctionList = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
  if (getFunctionList == nullptr) {
    dlclose(dl);
    err->code = "MODULE_LOAD_FAILED";
    err->message = "PKCS#11 module has no C_GetFunctionList: " + modulePath;
    return nullptr;
  }
  auto fail = [&](const char* fn, CK_RV rv) {
    // Named on the JS side, by the one table of src/hsm/errors.ts.
    err->code = "PKCS11_ERROR";
    err->message = std::string(fn) + " failed: " + RvHex(rv);
    err->function = fn;
    err->rv = rv;
    err->hasRv = true;
  };
  CK_FUNCTION_LIST_PREFIX* fl = nullptr;
  CK_RV rv = getFunctionList(&fl);
  if (rv != CKR_OK || fl == nullptr) {
    dlclose(dl);
    fail("C_GetFunctionList", rv != CKR_OK ? rv : 0x5UL /* CKR_GENERAL_ERROR: no list */);
    return nullptr;
  }
  // Normally src/hsm has initialized (and logged in) already and this is a no-op. If we are first,
  // ask for OS locking: our workers call the module concurrently. We never C_Finalize: the JS side
  // owns the module's lifetime.
  CK_C_INITIALIZE_ARGS initArgs = {};
  initArgs.flags = CKF_OS_LOCKING_OK;
  rv = fl->C_Initialize(&initArgs);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    dlclose(dl);
    fail("C_Initialize", rv);
    return nullptr;
  }

  std::unique_ptr<GcmPool> pool(new GcmPool(dl, fl, slot, onDone, onDoneArg));
  // Sessions are opened here, not in the threads, so that a bad slot or an exhausted session
  // count fails open() synchronously instead of surfacing later as per-request errors.
  for (unsigned i = 0; i < threads; i++) {
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s);
    if (rv != CKR_OK) {
      fail("C_OpenSession", rv);
      return nullptr;  // ~GcmPool closes the sessions opened so far
    }
    pool->workers_.push_back(std::make_unique<Worker>(s));
  }
  for (auto& w : pool->workers_) {
    Worker* raw = w.get();
    GcmPool* self = pool.get();
    w->thread = std::thread([self, raw] { self->WorkerLoop(raw); });
  }
  RegisterLivePool(pool.get());
  return pool;
}

GcmPool::GcmPool(void* dl, CK_FUNCTION_LIST_PREFIX* fl, CK_SLOT_ID slot, JobCompletion onDone, void* onDoneArg)
    : dl_(dl), fl_(fl), slot_(slot), onDone_(onDone), onDoneArg_(onDoneArg) {}

GcmPool::~GcmPool() {
  Close();
  dlclose(dl_);
}

bool GcmPool::Submit(Job* const* jobs, size_t count) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Checked under the lock that Close takes to set it, so no job can slip in after Close has
    // drained the queue.
    if (closed_.load(std::memory_order_relaxed)) return false;
    queue_.insert(queue_.end(), jobs, jobs + count);
  }
  if (count == 1) {
    cv_.notify_one();
  } else if (count > 1) {
    cv_.notify_all();
  }
  return true;
}

void GcmPool::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    closed_.store(true, std::memory_order_release);
  }
  UnregisterLivePool(this);
  cv_.notify_all();
  for (auto& w : workers_) {
    if (w->thread.joinable()) {
      w->thread.join();
    } else if (w->hasSession) {
      // Open() failed before starting the threads: the session is still ours to close.
      fl_->C_CloseSession(w->session);
      w->hasSession = false;
    }
  }
  // Workers are gone; whatever is still queued never ran.
  std::deque<Job*> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  if (gExiting.load(std::memory_order_acquire)) return;
  for (Job* job : left) {
    job->status = JobStatus::kClosed;
    onDone_(job, onDoneArg_);
  }
}

PoolStats GcmPool::Stats() const {
  return PoolStats{encrypted_.load(std::memory_order_relaxed), decrypted_.load(std::memory_order_relaxed),
                   reopened_.load(std::memory_order_relaxed), static_cast<unsigned>(workers_.size())};
}

size_t GcmPool::CloseWorkerSessionsForTesting() {
  if (closed()) return 0;
  for (auto& w : workers_) w->dropSession.store(true, std::memory_order_relaxed);
  return workers_.size();
}

void GcmPool::WorkerLoop(Worker* w) {
#if defined(__linux__)
  // SCHED_BATCH: same share of the CPU, but a worker woken for new jobs does not preempt the thread
  // that woke it. That thread is the event loop, handing over an operation in the middle of a
  // request: on a machine with no idle core (two cores, a client, kmsd and its workers) the woken
  // worker used to take the loop's core right there, and profiles put a third of the loop's wall
  // time on that one call. Now the worker runs on an idle core at once, or at the next tick.
  // Best effort: without it the pool works as before.
  sched_param batch = {};
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
#endif
  Job* job = nullptr;
  while (PopJob(&job)) {
    RunJob(w, job);
    if (!gExiting.load(std::memory_order_acquire)) onDone_(job, onDoneArg_);
  }
  if (w->hasSession) {
    // At process exit the JS side may have finalized the module already; the call then fails
    // harmlessly (the module stays mapped through our dlopen reference).
    fl_->C_CloseSession(w->session);
    w->hasSession = false;
  }
}

bool GcmPool::PopJob(Job** job) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return closed_.load(std::memory_order_relaxed) || !queue_.empty(); });
  if (closed_.load(std::memory_order_relaxed)) return false;
  *job = queue_.front();
  queue_.pop_front();
  return true;
}

void GcmPool::RunJob(Worker* w, Job* job) {
  if (w->dropSession.exchange(false, std::memory_order_relaxed) && w->hasSession) {
    fl_->C_CloseSession(w->session);  // deliberately keeps the stale handle: see the test hook
  }
  CK_RV rv = CKR_OK;
  if (!w->hasSession) {
    // An earlier reopen failed (token absent?). Try again now; a fresh session is all a retry
    // would bring, so there is no second attempt below.
    rv = ReopenSession(w);
    if (rv == CKR_OK) {
      rv = RunOnce(w->session, job);
    } else {
      job->function = "C_OpenSession";
    }
  } else {
    rv = RunOnce(w->session, job);
    // OPERATION_ACTIVE means the session holds an operation some earlier call left behind; like a
    // lost session, that is the session's fault, not the job's.
    if (SessionLost(rv) || rv == CKR_OPERATION_ACTIVE) {
      // Retry exactly once on a new session: enough for a reaped or reset session, and a
      // persistent failure (token gone) does not spin.
      CK_RV openRv = ReopenSession(w);
      if (openRv == CKR_OK) {
        rv = RunOnce(w->session, job);
      } else {
        rv = openRv;
        job->function = "C_OpenSession";
      }
    }
  }
  if (rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OPERATION_ACTIVE && w->hasSession)) {
    // BUFFER_TOO_SMALL leaves the operation active (PKCS#11 v2.40 §5.2), so the session cannot start
    // another one until it is replaced. Not retried: the job would fail the same way (our output
    // sizes suffice for conforming modules, so this is a module quirk, not a transient).
    ReopenSession(w);
  }

  if (rv == CKR_OK) {
    job->status = JobStatus::kOk;
    (job->op == GcmOp::kEncrypt ? encrypted_ : decrypted_).fetch_add(1, std::memory_order_relaxed);
  } else {
    job->status = JobStatus::kPkcs11Error;
    job->rv = rv;
    job->outLen = 0;
    // A failed decryption must not leave partial plaintext behind in the caller's buffer.
    if (job->op == GcmOp::kDecrypt && job->outCap > 0) std::memset(job->out, 0, job->outCap);
  }
}

// One attempt: C_{En,De}cryptInit + single-part C_{En,De}crypt. Sets job->function to the failing
// call (or the last call on success).
CK_RV GcmPool::RunOnce(CK_SESSION_HANDLE session, Job* job) {
  CK_GCM_PARAMS params;
  params.pIv = const_cast<CK_BYTE_PTR>(job->iv);
  params.ulIvLen = kIvBytes;
  params.ulIvBits = kIvBytes * 8;
  params.pAAD = job->aadLen > 0 ? const_cast<CK_BYTE_PTR>(job->aad) : nullptr;
  params.ulAADLen = job->aadLen;
  params.ulTagBits = kTagBits;
  CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof(params)};

  const bool enc = job->op == GcmOp::kEncrypt;
  job->function = enc ? "C_EncryptInit" : "C_DecryptInit";
  CK_RV rv = enc ? fl_->C_EncryptInit(session, &mech, job->key) : fl_->C_DecryptInit(session, &mech, job->key);
  if (rv != CKR_OK) return rv;

  // Single-part call with the output sized up front, so no length query round trip: encryption
  // yields exactly inLen + 16 bytes; for decryption we offer inLen bytes (the plaintext is 16 fewer)
  // because some modules, SoftHSM 2.6 among them, ask for room for the whole input before they know
  // the tag is valid. *outLen comes back with the real length.
  CK_ULONG outLen = job->outCap;
  job->function = enc ? "C_Encrypt" : "C_Decrypt";
  rv = enc ? fl_->C_Encrypt(session, NonNull(job->in), job->inLen, NonNull(job->out), &outLen)
           : fl_->C_Decrypt(session, NonNull(job->in), job->inLen, NonNull(job->out), &outLen);
  if (rv == CKR_OK) job->outLen = outLen;
  return rv;
}

CK_RV GcmPool::ReopenSession(Worker* w) {
  reopened_.fetch_add(1, std::memory_order_relaxed);
  if (w->hasSession) {
    fl_->C_CloseSession(w->session);  // usually already invalid; the result does not matter
    w->hasSession = false;
  }
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv = fl_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s);
  if (rv == CKR_OK) {
    w->session = s;
    w->hasSession = true;
  }
  return rv;
}

}  // namespace kmsd
