// kmsd_native: AES-256-GCM on token-resident keys, off the event loop.
//
// JS surface (typed in src/hsm/native-addon.ts):
//   open({ modulePath, slotId, threads? }) -> AesGcm
//   AesGcm#encrypt(handle, iv, aad, data, defer?) / #decrypt(...) -> Promise<Buffer>
//   AesGcm#flush()                                              -> hands deferred operations to the workers
//   AesGcm#encryptBatch(items) / #decryptBatch(items)           -> Promise<Array<Buffer | Error>>
//   AesGcm#stats(), #close(), #_closeWorkerSessions() (test hook)
//   clearCryptoErrors() -> boolean (whether the calling thread's OpenSSL error queue had entries)
//   disableCoreDumps() -> { coreLimitZero, notDumpable, error? } (process-wide; Node has no setrlimit)
//
// Shape of a call: on the JS thread we validate the arguments, allocate the output Buffer (once,
// at its final size or an upper bound), pin every Buffer involved in one private holder array
// referenced until completion, and queue one Job per item on the GcmPool. Workers run the jobs on
// their own sessions; the worker that finishes a request's last job posts the request to a
// thread-safe function, whose callback settles the promise on the JS thread.
#include <napi.h>
#include <openssl/err.h>  // Node's bundled OpenSSL headers (node-gyp's include dir); node exports the symbols

#include <errno.h>
#include <string.h>
#include <sys/resource.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gcm_pool.h"

namespace kmsd {
namespace {

constexpr size_t kIvBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr unsigned kMaxThreads = 256;
constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

// Holder array layout: [wrapper object, then per item: iv, aad, data, out].
constexpr uint32_t kHolderSlotsPerItem = 4;
constexpr uint32_t kHolderOut = 3;
uint32_t HolderIndex(size_t item, uint32_t slot) {
  return 1 + static_cast<uint32_t>(item) * kHolderSlotsPerItem + slot;
}

class Context;
struct Request;
void DeliverFromTsfn(Napi::Env env, Napi::Function unused, Context* ctx, Request* req);
using Tsfn = Napi::TypedThreadSafeFunction<Context, Request, DeliverFromTsfn>;

// One encrypt/decrypt call or one batch. Holds only raw N-API handles (no RAII wrappers): if the
// environment is torn down with the request in flight, it is freed without touching N-API.
struct Request {
  bool batch = false;
  napi_deferred deferred = nullptr;
  napi_ref holder = nullptr;
  std::vector<Job> jobs;
  std::atomic<size_t> remaining{0};
};

// Everything one open() created: the pool, the thread-safe function that carries results back, and
// the bookkeeping for keeping the event loop alive only while requests are in flight. Owned jointly
// by the JS wrapper object and the thread-safe function (which must outlive every posted request).
class Context {
 public:
  explicit Context(napi_env env) : env_(env) {}
  ~Context() { pool.reset(); }  // the pool is closed by now; this drops the module reference

  // JS thread; idempotent. Called by close(), by the wrapper's finalizer and by the env cleanup
  // hook at exit.
  void Shutdown() {
    if (shutDown) return;
    shutDown = true;
    // Joins the workers (each finishes the job in hand and closes its session) and fails the
    // queued jobs; requests completed by either are posted to the TSFN before we release it.
    if (pool) pool->Close();
    // Deferred jobs never reached a worker: they fail like queued ones (handing them to the pool
    // first would let a worker start one before Close stops it).
    std::vector<Job*> never;
    never.swap(deferred);
    for (Job* job : never) {
      job->status = JobStatus::kClosed;
      OnJobDone(job, this);
    }
    if (tsfnCreated) tsfn.Release();
    if (hookInstalled) {
      hookInstalled = false;
      napi_remove_env_cleanup_hook(env_, OnEnvCleanup, this);
    }
  }

  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<Context*>(arg);
    self->hookInstalled = false;  // being run; Node drops it itself
    self->Shutdown();
  }

  // Worker thread (or the closing JS thread, for jobs failed by Close).
  static void OnJobDone(Job* job, void* arg) {
    auto* req = static_cast<Request*>(job->owner);
    if (req->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    auto* self = static_cast<Context*>(arg);
    // Fails only if the TSFN is already closing, which our ordering (workers joined and queue
    // drained before Release) rules out except for a misbehaving teardown; then the request is
    // abandoned: its N-API handles die with the environment, and N-API may not be touched here.
    if (self->tsfn.NonBlockingCall(req) != napi_ok) delete req;
  }

  // JS thread. Hands the deferred jobs to the workers in one Submit: one lock and one wake-up for
  // all the operations started in a turn, instead of a worker woken (and on a busy machine, the
  // event loop's core taken) by each one while the loop is still starting the others.
  void FlushDeferred() {
    if (deferred.empty()) return;
    std::vector<Job*> jobs;
    jobs.swap(deferred);
    if (!pool->Submit(jobs.data(), jobs.size())) {
      // Unreachable: Shutdown flushes before it closes the pool. Fail them rather than leak them.
      for (Job* job : jobs) {
        job->status = JobStatus::kClosed;
        OnJobDone(job, this);
      }
    }
  }

  // JS thread: account for a request posted to the pool.
  void RequestStarted(Napi::Env env) {
    if (pending++ == 0 && !shutDown) tsfn.Ref(env);
  }
  void RequestFinished(Napi::Env env) {
    if (--pending == 0 && !shutDown) tsfn.Unref(env);
  }

  std::unique_ptr<GcmPool> pool;
  Tsfn tsfn;
  bool tsfnCreated = false;
  bool hookInstalled = false;
  bool shutDown = false;
  std::vector<Job*> deferred;  // started with defer, not yet submitted; JS thread only

 private:
  napi_env env_;
  size_t pending = 0;  // requests in the pool; JS thread only
};

// ---------------------------------------------------------------------------------------------
// Errors. Built with napi_create_error (which sets `code`) rather than Napi::Error, which would
// create a reference per error: batches can carry thousands of them.

Napi::Value MakeError(Napi::Env env, const char* code, const std::string& message, bool typeError = false) {
  napi_value codeValue = Napi::String::New(env, code);
  napi_value msgValue = Napi::String::New(env, message);
  napi_value err = nullptr;
  if (typeError) {
    napi_create_type_error(env, codeValue, msgValue, &err);
  } else {
    napi_create_error(env, codeValue, msgValue, &err);
  }
  return Napi::Value(env, err);
}

// Only the bare return value: src/hsm/errors.ts names it, for this path and pkcs11js's alike.
Napi::Value MakePkcs11Error(Napi::Env env, const char* function, CK_RV rv) {
  Napi::Value err = MakeError(env, "PKCS11_ERROR", std::string(function) + " failed: " + RvHex(rv));
  Napi::Object obj = err.As<Napi::Object>();
  obj.Set("pkcs11Function", Napi::String::New(env, function));
  obj.Set("rv", Napi::Number::New(env, static_cast<double>(rv)));
  return err;
}

Napi::Value MakeClosedError(Napi::Env env) {
  return MakeError(env, "CLOSED", "the native AES-GCM context is closed");
}

Napi::Value MakeInvalidArg(Napi::Env env, const std::string& message) {
  return MakeError(env, "ERR_INVALID_ARG_VALUE", message, true);
}

Napi::Value Rejected(Napi::Env env, Napi::Value reason) {
  auto deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(reason);
  return deferred.Promise();
}

// With C++ exceptions disabled, a failed N-API call leaves a pending JS exception; take it so it
// can be delivered as a rejection instead.
Napi::Value TakePendingException(Napi::Env env) {
  if (env.IsExceptionPending()) return env.GetAndClearPendingException().Value();
  return MakeError(env, "ERR_NATIVE", "N-API call failed");
}

// ---------------------------------------------------------------------------------------------
// Argument decoding

bool ToHandle(Napi::Value v, CK_OBJECT_HANDLE* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= kMaxSafeInteger) || std::floor(d) != d) return false;
  *out = static_cast<CK_OBJECT_HANDLE>(d);
  return true;
}

// Fills job (inputs and output) and the item's holder slots; returns an error message or null.
const char* PrepareJob(Napi::Env env, GcmOp op, Napi::Value handle, Napi::Value iv, Napi::Value aad,
                       Napi::Value data, Napi::Array holder, size_t index, Job* job) {
  if (!ToHandle(handle, &job->key)) return "handle must be a non-negative integer";
  if (!iv.IsBuffer() || iv.As<Napi::Buffer<uint8_t>>().Length() != kIvBytes) return "iv must be a 12-byte Buffer";
  if (!aad.IsBuffer()) return "aad must be a Buffer";
  if (!data.IsBuffer()) return op == GcmOp::kEncrypt ? "plaintext must be a Buffer" : "ciphertext must be a Buffer";
  auto ivBuf = iv.As<Napi::Buffer<uint8_t>>();
  auto aadBuf = aad.As<Napi::Buffer<uint8_t>>();
  auto dataBuf = data.As<Napi::Buffer<uint8_t>>();
  // Encryption appends the 16-byte tag. Decryption gets room for the whole input; see RunOnce.
  size_t cap = dataBuf.Length() + (op == GcmOp::kEncrypt ? kTagBytes : 0);
  auto out = Napi::Buffer<uint8_t>::New(env, cap);
  if (env.IsExceptionPending()) {
    env.GetAndClearPendingException();
    return "cannot allocate the output Buffer";
  }
  job->op = op;
  job->iv = ivBuf.Data();
  job->aad = aadBuf.Data();
  job->aadLen = aadBuf.Length();
  job->in = dataBuf.Data();
  job->inLen = dataBuf.Length();
  job->out = out.Data();
  job->outCap = cap;
  // Pin inputs and output until completion: the worker reads and writes their memory directly.
  holder.Set(HolderIndex(index, 0), ivBuf);
  holder.Set(HolderIndex(index, 1), aadBuf);
  holder.Set(HolderIndex(index, 2), dataBuf);
  holder.Set(HolderIndex(index, kHolderOut), out);
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Completion (JS thread)

Napi::Value JobResult(Napi::Env env, Napi::Array holder, size_t index, const Job& job) {
  switch (job.status) {
    case JobStatus::kOk: {
      Napi::Value out = holder.Get(HolderIndex(index, kHolderOut));
      if (job.outLen == job.outCap) return out;
      // Decryption: the plaintext is shorter than the room we offered. subarray shares the memory
      // and keeps the Buffer prototype.
      Napi::Object buf = out.As<Napi::Object>();
      return buf.Get("subarray").As<Napi::Function>().Call(
          buf, {Napi::Number::New(env, 0), Napi::Number::New(env, static_cast<double>(job.outLen))});
    }
    case JobStatus::kPkcs11Error:
      return MakePkcs11Error(env, job.function, job.rv);
    case JobStatus::kClosed:
      return MakeClosedError(env);
    case JobStatus::kInvalid:
      return MakeInvalidArg(env, job.function);
    case JobStatus::kPending:
      break;
  }
  return MakeError(env, "ERR_NATIVE", "job completed without a result");
}

// Settles the request's promise and frees it.
void Deliver(Napi::Env env, Request* req) {
  Napi::HandleScope scope(env);
  napi_value holderValue = nullptr;
  napi_get_reference_value(env, req->holder, &holderValue);
  Napi::Array holder(env, holderValue);
  if (req->batch) {
    Napi::Array results = Napi::Array::New(env, req->jobs.size());
    for (size_t i = 0; i < req->jobs.size(); i++) {
      results.Set(static_cast<uint32_t>(i), JobResult(env, holder, i, req->jobs[i]));
    }
    napi_resolve_deferred(env, req->deferred, results);
  } else {
    const Job& job = req->jobs[0];
    Napi::Value result = JobResult(env, holder, 0, job);
    if (job.status == JobStatus::kOk) {
      napi_resolve_deferred(env, req->deferred, result);
    } else {
      napi_reject_deferred(env, req->deferred, result);
    }
  }
  napi_delete_reference(env, req->holder);
  delete req;
}

void DeliverFromTsfn(Napi::Env env, Napi::Function, Context* ctx, Request* req) {
  if (static_cast<napi_env>(env) == nullptr) {
    // The environment is being torn down with this request still queued: nothing to settle.
    delete req;
    return;
  }
  Deliver(env, req);
  ctx->RequestFinished(env);
}

// ---------------------------------------------------------------------------------------------
// The AesGcm object returned by open()

struct AddonData {
  Napi::FunctionReference aesGcmConstructor;
};

// Marks the External that open() hands to the AesGcm constructor, so the constructor (reachable
// from JS through the prototype) cannot be fed some other External.
constexpr napi_type_tag kContextTag = {0x6b6d7364'6e617469ULL, 0x76652e41'6573476dULL};

class AesGcm : public Napi::ObjectWrap<AesGcm> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeAesGcm",
                       {
                           InstanceMethod<&AesGcm::Encrypt>("encrypt"),
                           InstanceMethod<&AesGcm::Decrypt>("decrypt"),
                           InstanceMethod<&AesGcm::EncryptBatch>("encryptBatch"),
                           InstanceMethod<&AesGcm::DecryptBatch>("decryptBatch"),
                           InstanceMethod<&AesGcm::Flush>("flush"),
                           InstanceMethod<&AesGcm::Stats>("stats"),
                           InstanceMethod<&AesGcm::Close>("close"),
                           InstanceMethod<&AesGcm::CloseWorkerSessions>("_closeWorkerSessions"),
                       });
  }

  // Only open() constructs these; it passes the context as an External.
  explicit AesGcm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AesGcm>(info) {
    bool tagged = false;
    if (info.Length() == 1 && info[0].IsExternal()) {
      napi_check_object_type_tag(info.Env(), info[0], &kContextTag, &tagged);
    }
    if (!tagged) {
      Napi::TypeError::New(info.Env(), "use open() to create a NativeAesGcm").ThrowAsJavaScriptException();
      return;
    }
    ctx_ = *info[0].As<Napi::External<std::shared_ptr<Context>>>().Data();
  }

  // Reached when the object is collected without close(). No request can be in flight (each one
  // pins this object), so this only stops idle workers.
  ~AesGcm() override {
    if (ctx_) ctx_->Shutdown();
  }

 private:
  Napi::Value Encrypt(const Napi::CallbackInfo& info) { return Single(info, GcmOp::kEncrypt); }
  Napi::Value Decrypt(const Napi::CallbackInfo& info) { return Single(info, GcmOp::kDecrypt); }
  Napi::Value EncryptBatch(const Napi::CallbackInfo& info) { return Batch(info, GcmOp::kEncrypt); }
  Napi::Value DecryptBatch(const Napi::CallbackInfo& info) { return Batch(info, GcmOp::kDecrypt); }

  Napi::Value Single(const Napi::CallbackInfo& info, GcmOp op) {
    Napi::Env env = info.Env();
    if (ctx_->shutDown) return Rejected(env, MakeClosedError(env));
    Napi::Array holder = Napi::Array::New(env, 1 + kHolderSlotsPerItem);
    holder.Set(0u, Value());
    auto req = std::make_unique<Request>();
    req->jobs.resize(1);
    Job& job = req->jobs[0];
    const char* invalid = PrepareJob(env, op, info[0], info[1], info[2], info[3], holder, 0, &job);
    if (invalid != nullptr) return Rejected(env, MakeInvalidArg(env, invalid));
    // defer: queued until flush() (the caller promises to call it before it yields to the loop).
    const bool defer = info.Length() > 4 && info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value();
    return Start(env, std::move(req), holder, defer);
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    if (!ctx_->shutDown) ctx_->FlushDeferred();
    return info.Env().Undefined();
  }

  Napi::Value Batch(const Napi::CallbackInfo& info, GcmOp op) {
    Napi::Env env = info.Env();
    if (ctx_->shutDown) return Rejected(env, MakeClosedError(env));
    if (!info[0].IsArray()) return Rejected(env, MakeInvalidArg(env, "items must be an array"));
    Napi::Array items = info[0].As<Napi::Array>();
    const size_t n = items.Length();
    Napi::Array holder = Napi::Array::New(env, 1 + n * kHolderSlotsPerItem);
    holder.Set(0u, Value());
    auto req = std::make_unique<Request>();
    req->batch = true;
    req->jobs.resize(n);
    for (size_t i = 0; i < n; i++) {
      Job& job = req->jobs[i];
      const char* invalid = "item must be an object { handle, iv, aad, data }";
      Napi::Value item = items.Get(static_cast<uint32_t>(i));
      if (!env.IsExceptionPending() && item.IsObject()) {
        Napi::Object o = item.As<Napi::Object>();
        Napi::Value handle = o.Get("handle");
        Napi::Value iv = o.Get("iv");
        Napi::Value aad = o.Get("aad");
        Napi::Value data = o.Get("data");
        if (!env.IsExceptionPending()) invalid = PrepareJob(env, op, handle, iv, aad, data, holder, i, &job);
      }
      if (env.IsExceptionPending()) env.GetAndClearPendingException();  // a throwing getter
      if (invalid != nullptr) {
        // Never queued; reported in place. `function` carries the message (static string).
        job.status = JobStatus::kInvalid;
        job.function = invalid;
      }
    }
    return Start(env, std::move(req), holder);
  }

  // Queues the request's prepared jobs and returns its promise.
  Napi::Value Start(Napi::Env env, std::unique_ptr<Request> req, Napi::Array holder, bool defer = false) {
    napi_value promise = nullptr;
    if (napi_create_promise(env, &req->deferred, &promise) != napi_ok ||
        napi_create_reference(env, holder, 1, &req->holder) != napi_ok) {
      return Rejected(env, TakePendingException(env));
    }
    std::vector<Job*> runnable;
    runnable.reserve(req->jobs.size());
    for (Job& job : req->jobs) {
      if (job.status == JobStatus::kInvalid) continue;
      job.owner = req.get();
      runnable.push_back(&job);
    }
    req->remaining.store(runnable.size(), std::memory_order_relaxed);
    if (runnable.empty()) {
      Deliver(env, req.release());  // nothing to run (empty batch, or every item invalid)
      return Napi::Value(env, promise);
    }
    ctx_->RequestStarted(env);
    Request* raw = req.release();  // owned by the pool's jobs until the last one completes
    if (defer) {
      ctx_->deferred.insert(ctx_->deferred.end(), runnable.begin(), runnable.end());
      return Napi::Value(env, promise);
    }
    if (!ctx_->pool->Submit(runnable.data(), runnable.size())) {
      // Unreachable while !shutDown (only Shutdown closes the pool, on this thread); kept so a
      // future change cannot leak the request.
      for (Job* job : runnable) job->status = JobStatus::kClosed;
      Deliver(env, raw);
      ctx_->RequestFinished(env);
    }
    return Napi::Value(env, promise);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    PoolStats s = ctx_->pool->Stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("encrypt", Napi::Number::New(env, static_cast<double>(s.encrypt)));
    o.Set("decrypt", Napi::Number::New(env, static_cast<double>(s.decrypt)));
    o.Set("sessionsReopened", Napi::Number::New(env, static_cast<double>(s.sessionsReopened)));
    o.Set("threads", Napi::Number::New(env, s.threads));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    ctx_->Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value CloseWorkerSessions(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(ctx_->pool->CloseWorkerSessionsForTesting()));
  }

  std::shared_ptr<Context> ctx_;
};

// ---------------------------------------------------------------------------------------------
// Module functions

void ThrowOpenError(Napi::Env env, const OpenError& e) {
  Napi::Value err = MakeError(env, e.code.c_str(), e.message);
  if (e.function != nullptr) err.As<Napi::Object>().Set("pkcs11Function", e.function);
  if (e.hasRv) err.As<Napi::Object>().Set("rv", Napi::Number::New(env, static_cast<double>(e.rv)));
  napi_throw(env, err);
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto invalid = [&](const char* msg) {
    napi_throw(env, MakeInvalidArg(env, msg));
    return env.Undefined();
  };
  if (!info[0].IsObject()) return invalid("open() takes { modulePath, slotId, threads? }");
  Napi::Object opts = info[0].As<Napi::Object>();
  Napi::Value modulePath = opts.Get("modulePath");
  Napi::Value slotId = opts.Get("slotId");
  Napi::Value threadsValue = opts.Get("threads");
  if (env.IsExceptionPending()) return env.Undefined();
  if (!modulePath.IsString() || modulePath.As<Napi::String>().Utf8Value().empty()) {
    return invalid("modulePath must be a non-empty string");
  }
  CK_SLOT_ID slot = 0;
  if (!ToHandle(slotId, &slot)) return invalid("slotId must be a non-negative integer");
  unsigned threads = std::thread::hardware_concurrency();
  if (threads == 0) threads = 1;  // unknown core count
  if (threads > kMaxThreads) threads = kMaxThreads;
  if (!threadsValue.IsUndefined()) {
    double t = threadsValue.IsNumber() ? threadsValue.As<Napi::Number>().DoubleValue() : 0;
    if (!(t >= 1 && t <= kMaxThreads) || std::floor(t) != t) return invalid("threads must be an integer in [1, 256]");
    threads = static_cast<unsigned>(t);
  }

  auto ctx = std::make_shared<Context>(env);
  OpenError err;
  ctx->pool = GcmPool::Open(modulePath.As<Napi::String>().Utf8Value(), slot, threads, &Context::OnJobDone,
                            ctx.get(), &err);
  if (!ctx->pool) {
    ThrowOpenError(env, err);
    return env.Undefined();
  }
  // The TSFN co-owns the context: it may deliver queued requests after the JS object is gone.
  ctx->tsfn = Tsfn::New(
      env, "kmsd_native.AesGcm", 0 /* unbounded queue: workers never block */, 1 /* the context's */, ctx.get(),
      [](Napi::Env, std::shared_ptr<Context>* owner, Context*) { delete owner; }, new std::shared_ptr<Context>(ctx));
  if (env.IsExceptionPending()) {
    ctx->Shutdown();
    return env.Undefined();
  }
  ctx->tsfnCreated = true;
  ctx->tsfn.Unref(env);  // an idle context must not keep the process alive
  // Stop the workers and close their sessions at exit even if close() was never called.
  if (napi_add_env_cleanup_hook(env, &Context::OnEnvCleanup, ctx.get()) == napi_ok) ctx->hookInstalled = true;

  auto external = Napi::External<std::shared_ptr<Context>>::New(env, &ctx);
  napi_type_tag_object(env, external, &kContextTag);
  auto* data = env.GetInstanceData<AddonData>();
  return data->aesGcmConstructor.New({external});
}

// SoftHSM links libcrypto, and inside node its OpenSSL calls bind to the copy the node binary
// exports (the executable comes first in symbol lookup), so token and node:crypto share each
// thread's OpenSSL error queue. A refused operation in the token (a C_UnwrapKey whose padding does
// not check) can leave entries there that node:crypto then reports from its next, unrelated call
// on the same thread: createPrivateKey throws "padding check failed". src/hsm calls this after
// every pkcs11js call on the JS thread. Returns whether there was anything to clear.
Napi::Value ClearCryptoErrors(const Napi::CallbackInfo& info) {
  bool had = ERR_peek_error() != 0;
  ERR_clear_error();
  return Napi::Boolean::New(info.Env(), had);
}

// A core of kmsd would hold the PIN, SOFTWARE key material, plaintexts and data keys. Two locks, so
// that either alone is enough: RLIMIT_CORE 0 (soft and hard, so an unprivileged process cannot raise
// it again) and, on Linux, PR_SET_DUMPABLE 0, which also stops a core when someone with privilege
// raises the limit from outside (prlimit), and makes /proc/PID/mem and ptrace root-only. Both last
// until exec. Reports what holds afterwards rather than what was asked.
Napi::Value DisableCoreDumps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string error;
  struct rlimit zero = {0, 0};
  if (setrlimit(RLIMIT_CORE, &zero) != 0) error = std::string("setrlimit(RLIMIT_CORE): ") + strerror(errno);
  struct rlimit now = {1, 1};
  bool coreLimitZero = getrlimit(RLIMIT_CORE, &now) == 0 && now.rlim_cur == 0;
  bool notDumpable = false;
#if defined(__linux__)
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 && error.empty()) error = std::string("prctl(PR_SET_DUMPABLE): ") + strerror(errno);
  notDumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0;
#else
  if (error.empty()) error = "PR_SET_DUMPABLE exists only on Linux";
#endif
  Napi::Object result = Napi::Object::New(env);
  result.Set("coreLimitZero", Napi::Boolean::New(env, coreLimitZero));
  result.Set("notDumpable", Napi::Boolean::New(env, notDumpable));
  if (!error.empty()) result.Set("error", Napi::String::New(env, error));
  return result;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->aesGcmConstructor = Napi::Persistent(AesGcm::Define(env));
  env.SetInstanceData(data);  // freed with the environment
  exports.Set("open", Napi::Function::New<Open>(env, "open"));
  exports.Set("clearCryptoErrors", Napi::Function::New<ClearCryptoErrors>(env, "clearCryptoErrors"));
  exports.Set("disableCoreDumps", Napi::Function::New<DisableCoreDumps>(env, "disableCoreDumps"));
  return exports;
}

}  // namespace
}  // namespace kmsd

static Napi::Object InitKmsdNative(Napi::Env env, Napi::Object exports) { return kmsd::Init(env, exports); }

NODE_API_MODULE(kmsd_native, InitKmsdNative)
