// Watching kmsd's calls into the PKCS#11 module without a stand-in: pkcs11js binds each instance's
// methods from the native class's prototype when the instance is constructed (index.js,
// modify(this)), so a wrapper put on that prototype before HsmToken.open sees every call that
// token's instance makes, and the real module still answers them.

import * as pkcs11js from 'pkcs11js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Fn = (...args: any[]) => any;

/**
 * Puts `wrap(real)` in place of the native method `name` for pkcs11js instances constructed from
 * now on; returns the function that puts the real one back.
 */
export function wrapNative<F extends Fn = Fn>(name: string, wrap: (real: F) => F): () => void {
  const proto = Object.getPrototypeOf(pkcs11js.PKCS11.prototype) as Record<string, F>;
  const real = proto[name];
  if (typeof real !== 'function') throw new Error(`pkcs11js has no native ${name}`);
  proto[name] = wrap(real);
  return () => {
    proto[name] = real;
  };
}

/** Counts the calls of each named native method (instances constructed from now on); `restore` ends it. */
export function countNative(names: string[]): { calls: Record<string, number>; restore: () => void } {
  const calls: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  const restores = names.map((n) =>
    wrapNative(n, (real) =>
      function (this: unknown, ...args: unknown[]) {
        calls[n]++;
        return real.apply(this, args);
      },
    ),
  );
  return { calls, restore: () => restores.forEach((r) => r()) };
}
