// Transport bounds without a daemon: the batch-stream budget (open streams and held bytes per
// connection and per principal), the bound on error messages sent back, and their settings.

import { describe, expect, it } from 'vitest';
import { StreamBudget } from '../../src/api/grpc/limits';
import { MAX_ANSWER_MESSAGE_BYTES, MAX_ANSWER_MESSAGE_CHARS, boundedMessage } from '../../src/api/admission';
import { ConfigError, loadConfig } from '../../src/config';
import { KmsError } from '../../src/kms/errors';

const limits = { maxStreamsPerConnection: 2, maxStreamsPerPrincipal: 3, maxBufferedBytesPerConnection: 100, maxBufferedBytesPerPrincipal: 150 };

describe('StreamBudget', () => {
  it('refuses a stream over the connection or principal limit with Throttling naming the limit, and counts closes', () => {
    let idle = 0;
    const b = new StreamBudget(limits, () => idle++);
    const a1 = b.open('EncryptStream', 'c1', 'app');
    b.open('EncryptStream', 'c1', 'app');
    expect(() => b.open('EncryptStream', 'c1', 'app')).toThrow(/limit is 2 \(KMS_STREAM_MAX_PER_CONNECTION\)/);
    b.open('DecryptStream', 'c2', 'app');
    let e: unknown;
    try {
      b.open('EncryptStream', 'c3', 'app');
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(KmsError);
    expect((e as KmsError).code).toBe('Throttling');
    expect((e as KmsError).message).toMatch(/principal app .*limit is 3 \(KMS_STREAM_MAX_PER_PRINCIPAL\)/);
    b.open('EncryptStream', 'c3', 'other'); // another principal is not affected
    a1.close();
    a1.close(); // idempotent
    b.open('EncryptStream', 'c3', 'app');
    expect(b.stats.refusedStreams).toBe(2);
  });

  it('charges bytes to the connection and the principal: a stream that holds something waits, one that holds nothing is refused', () => {
    const b = new StreamBudget(limits, () => undefined);
    const s1 = b.open('EncryptStream', 'c1', 'app');
    const s2 = b.open('EncryptStream', 'c1', 'app');
    expect(s1.reserve(500)).toBe('ok'); // a message alone is always taken
    expect(s1.reserve(10)).toBe('wait');
    const r = s2.reserve(10);
    expect(r).toBeInstanceOf(KmsError);
    expect((r as KmsError).message).toMatch(/buffers of this connection are full \(500 bytes of messages in work and answers not read by the client\), the limit is 100 bytes \(KMS_STREAM_BUFFER_BYTES_PER_CONNECTION\)/);
    expect(s2.room()).toBeInstanceOf(KmsError);
    s1.release(500);
    expect(s2.room()).toBe('ok');
    expect(s2.reserve(60)).toBe('ok');
    const s3 = b.open('EncryptStream', 'c2', 'app');
    expect(s3.reserve(60)).toBe('ok');
    // The principal holds 120 of 150 now.
    const s4 = b.open('EncryptStream', 'c3', 'other');
    expect(s4.reserve(100)).toBe('ok');
    expect(b.bytes).toBe(220);
    s2.close();
    s3.close();
    s4.close();
    s1.close();
    expect(b.bytes).toBe(0);
  });

  it('asks for a collection (debounced) when streams that held a lot hold nothing any more', async () => {
    let idle = 0;
    const b = new StreamBudget({ ...limits, maxBufferedBytesPerConnection: 64 * 1024 * 1024, maxBufferedBytesPerPrincipal: 64 * 1024 * 1024 }, () => idle++);
    const s = b.open('EncryptStream', 'c1', 'app');
    s.reserve(8 * 1024 * 1024);
    s.close();
    expect(idle).toBe(0); // not at once: a second later, if the streams still hold nothing
    for (let i = 0; i < 50 && idle === 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(idle).toBe(1);
  });
});

describe('boundedMessage', () => {
  it('leaves short messages alone', () => {
    expect(boundedMessage('principal "a" may not call Encrypt')).toBe('principal "a" may not call Encrypt');
  });

  it('cuts long ones, in characters and in percent-encoded bytes, and says how much was cut', () => {
    const long = boundedMessage(`principal "a" may not call DisableKey on key ${'k'.repeat(1024 * 1024)}`);
    expect(long.length).toBeLessThanOrEqual(MAX_ANSWER_MESSAGE_CHARS);
    expect(long).toMatch(/^principal "a" may not call DisableKey on key k+\.\.\. \(\d+ more characters cut\)$/);
    const wide = boundedMessage('鍵'.repeat(5000));
    expect(encodeURI(wide).length).toBeLessThanOrEqual(MAX_ANSWER_MESSAGE_BYTES);
    const pairs = boundedMessage('😀'.repeat(3000));
    expect(() => encodeURI(pairs)).not.toThrow(); // no surrogate pair split
    expect(() => encodeURI(boundedMessage('x\uD800y'))).not.toThrow();
  });
});

describe('transport settings', () => {
  it('default to the documented values', () => {
    expect(loadConfig([], {}).security).toMatchObject({
      handshakeTimeoutMs: 10_000,
      maxUnauthenticated: 1024,
      maxUnauthenticatedPerAddress: 64,
      maxConcurrentStreams: 256,
      maxStreamsPerConnection: 16,
      maxStreamsPerPrincipal: 32,
      maxBufferedBytesPerConnection: 8 * 1024 * 1024,
      maxBufferedBytesPerPrincipal: 32 * 1024 * 1024,
    });
  });

  it('hold each to its range, naming it', () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ KMS_TLS_HANDSHAKE_TIMEOUT_MS: '50' }, /^tlsHandshakeTimeoutMs must be an integer from 100 to 120000/],
      [{ KMS_TLS_MAX_UNAUTHENTICATED: '4096' }, /^tlsMaxUnauthenticated must be an integer from 1 to 3072/],
      [{ KMS_TLS_MAX_UNAUTHENTICATED_PER_ADDRESS: '0' }, /^tlsMaxUnauthenticatedPerAddress /],
      [{ KMS_MAX_CONCURRENT_STREAMS: '0' }, /^maxConcurrentStreams /],
      [{ KMS_STREAM_MAX_PER_CONNECTION: 'x' }, /^streamMaxPerConnection /],
      [{ KMS_STREAM_MAX_PER_PRINCIPAL: '0' }, /^streamMaxPerPrincipal /],
      [{ KMS_STREAM_BUFFER_BYTES_PER_CONNECTION: '1000' }, /^streamBufferBytesPerConnection /],
      [{ KMS_STREAM_BUFFER_BYTES_PER_PRINCIPAL: '1000' }, /^streamBufferBytesPerPrincipal /],
    ];
    for (const [env, re] of bad) {
      let msg = '';
      try {
        loadConfig([], env);
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        msg = (e as Error).message;
      }
      expect(msg, JSON.stringify(env)).toMatch(re);
    }
    expect(loadConfig([], { KMS_TLS_HANDSHAKE_TIMEOUT_MS: '2000' }).security?.handshakeTimeoutMs).toBe(2000);
  });
});
