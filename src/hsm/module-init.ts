// C_Initialize off the event loop. SoftHSM reads every object file of its tokens in C_Initialize
// (measured: 0.4 s at 1,200 objects idle, 23 s at 10,000 under load), and any module may take
// long there; pkcs11js only has a synchronous C_Initialize. A worker thread makes the call, so the
// daemon listens, answers health checks and turns callers away with a clear answer meanwhile.
//
// PKCS#11 state is per process, not per thread: once the worker's call returns, the module is
// initialized for the whole process, and the token context's own C_Initialize answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED at once (token.ts accepts that). The caller must hold the module
// loaded (a pkcs11js instance that has called load()) from before the worker starts until its own
// C_Initialize: the worker unloads its handle when it exits, and a module unloaded by every holder
// would forget that it was initialized.

import { Worker } from 'node:worker_threads';

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const pkcs11js = require(workerData.pkcs11js);
const p11 = new pkcs11js.PKCS11();
let message = null;
try {
  p11.load(workerData.modulePath);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
} catch (e) {
  message = String((e && e.message) || e);
}
parentPort.postMessage({ message });
`;

/**
 * Calls C_Initialize (CKF_OS_LOCKING_OK, as token.ts does) in a worker thread. Resolves either way:
 * a failure is left for the token context's own C_Initialize to report with the error table, so
 * there is one place that turns it into a message.
 */
export function initializeModuleOffLoop(modulePath: string): Promise<void> {
  return new Promise<void>((resolve) => {
    let worker: Worker;
    try {
      worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { modulePath, pkcs11js: require.resolve('pkcs11js') } });
    } catch {
      resolve(); // no thread to be had: the synchronous call will do it, on the loop
      return;
    }
    // The worker ends on its own once it has answered; the daemon does not wait for it to exit.
    worker.unref();
    worker.once('message', () => resolve());
    worker.once('error', () => resolve());
    worker.once('exit', () => resolve());
  });
}
