// The synchronous form of an async store interface (src/store/api.ts): what the SQLite backend's
// core implements, so the compiler checks that its calls are the interface's, one for one.

export type Sync<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => Promise<infer R> ? (...args: A) => R : T[K] extends (...args: infer A) => AsyncIterable<infer R> ? (...args: A) => Iterable<R> : T[K];
};
