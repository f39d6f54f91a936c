// Memory under unread batch streams: a client over plain node:http2 opens many EncryptStream
// streams on a few connections, sends one large message on each (256 items of 6 KiB) and never
// reads an answer. kmsd must stay within a memory bound (its RSS, from /proc), refuse what is over
// its stream limits with RESOURCE_EXHAUSTED naming the limit, keep answering unrelated callers, and
// give the memory back once the streams are gone.

import fs from 'node:fs';
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serviceConstructor } from '../../src/api/proto';
import { Kmsd, startKmsd } from '../helpers/daemon';

const CONNECTIONS = 4;
const STREAMS_PER_CONNECTION = 32;
const ITEMS = 256;
const ITEM_BYTES = 6 * 1024;
const MB = 1024 * 1024;
// Without limits kmsd grew by ~640 MB here (and by 2.2 GB with 500 streams); with them, by ~160 MB:
// 32 streams (the per-principal limit) may each have one message decoded before the buffers are
// full, and the ones then refused leave their message as garbage.
const PEAK_BOUND = 280 * MB;
const AFTER_BOUND = 200 * MB;

let k: Kmsd;
let keyId: string;

beforeAll(async () => {
  k = await startKmsd();
  keyId = (await k.client.createKey()).KeyMetadata.KeyId as string;
});

afterAll(async () => {
  await k?.stop();
});

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** One gRPC frame of an EncryptStream request (uncompressed). */
function encryptStreamFrame(): Buffer {
  const m = serviceConstructor('KeyManagementService').service.EncryptStream;
  const plaintext = Buffer.alloc(ITEM_BYTES, 0x61).toString('base64');
  const body = m.requestSerialize({ BatchId: 'unread', Items: Array.from({ length: ITEMS }, () => ({ KeyId: keyId, Plaintext: plaintext })) });
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

interface Opened {
  stream: http2.ClientHttp2Stream;
  /** The response headers (for a refusal, the trailers-only answer with grpc-status). */
  response: Promise<http2.IncomingHttpHeaders>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('EncryptStream streams that send and never read', () => {
  it('keep kmsd within a memory bound, are refused past the limits with RESOURCE_EXHAUSTED, and give the memory back', async () => {
    const frame = encryptStreamFrame();
    // Warm up kmsd's paths once so the baseline includes its steady state.
    await k.client.call('EncryptBatch', { Items: [{ KeyId: keyId, Plaintext: Buffer.from('warm').toString('base64') }] });
    const baseline = rssBytes(k.pid);
    // The client's own session memory limit (10 MB by default) would otherwise refuse its streams
    // itself once kmsd stops reading (ENHANCE_YOUR_CALM).
    const sessions = Array.from({ length: CONNECTIONS }, () => http2.connect(`http://${k.endpoint}`, { maxSessionMemory: 1024 }));
    for (const s of sessions) s.on('error', () => undefined);
    const opened: Opened[] = [];
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(k.pid))), 50);
    try {
      for (const s of sessions) {
        for (let i = 0; i < STREAMS_PER_CONNECTION; i++) {
          const stream = s.request({ ':method': 'POST', ':path': '/kms.v1.KeyManagementService/EncryptStream', 'content-type': 'application/grpc', te: 'trailers' });
          stream.on('error', () => undefined);
          const response = new Promise<http2.IncomingHttpHeaders>((resolve) => {
            stream.once('response', (h) => resolve(h));
            stream.once('close', () => resolve({ rst: String(stream.rstCode) } as http2.IncomingHttpHeaders));
          });
          stream.write(frame);
          opened.push({ stream, response });
        }
      }
      // Every stream is answered with headers: an accepted one when its first answer is written
      // (the client reads none of it), a refused one with its status.
      const headers = await Promise.all(opened.map((o) => o.response));
      // Let kmsd finish whatever it took on, then look at its memory once more.
      await sleep(1500);
      peak = Math.max(peak, rssBytes(k.pid));

      // Unrelated callers are answered meanwhile.
      const enc = await k.client.encrypt(keyId, Buffer.from('still here'));
      expect((await k.client.call<{ Plaintext: string }>('Decrypt', { CiphertextBlob: enc.CiphertextBlob })).Plaintext).toBe(Buffer.from('still here').toString('base64'));

      const refusals = headers.filter((h) => h['grpc-status'] === '8');
      const accepted = headers.filter((h) => Number(h[':status']) === 200 && h['grpc-status'] === undefined);
      // What was sent: 128 messages of ~2 MiB. Unbounded, kmsd held all of them and their answers.
      console.log(`kmsd RSS: baseline ${(baseline / MB).toFixed(0)} MB, peak ${(peak / MB).toFixed(0)} MB; ${accepted.length} streams accepted, ${refusals.length} refused`);
      expect(refusals.length).toBeGreaterThan(0);
      expect(accepted.length).toBeGreaterThan(0);
      for (const h of refusals) expect(decodeURIComponent(String(h['grpc-message']))).toMatch(/EncryptStream.*limit|limit.*EncryptStream|KMS_STREAM/);
      expect(headers.every((h) => h['grpc-status'] === '8' || Number(h[':status']) === 200)).toBe(true);
      expect(peak - baseline).toBeLessThan(PEAK_BOUND);
    } finally {
      clearInterval(sampler);
      for (const o of opened) o.stream.close(http2.constants.NGHTTP2_CANCEL);
      for (const s of sessions) s.destroy();
    }
    // Once the streams are gone, the memory comes back: kmsd collects its garbage when stream
    // buffers drain (the JS heap returns to a few MB); glibc keeps part of what was freed in its
    // arenas, so RSS does not fall all the way to the baseline.
    await sleep(2500); // kmsd collects a second after the last stream buffer is given back
    let after = rssBytes(k.pid);
    for (let i = 0; i < 100 && after - baseline >= AFTER_BOUND; i++) {
      await sleep(200);
      after = rssBytes(k.pid);
    }
    console.log(`kmsd RSS after the streams closed: ${(after / MB).toFixed(0)} MB`);
    expect(after).toBeLessThan(peak);
    expect(after - baseline).toBeLessThan(AFTER_BOUND);
  });
});
