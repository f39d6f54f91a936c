// Hostile input (issue 6, item 5): fast-check property tests over the request fields of every RPC
// of KeyManagementService, CeremonyService and AuditService, sent through the real gRPC stack to a
// real kmsd; every identifier field at 200 KiB; then raw frames that are not valid protobuf, HTTP/2-level garbage, a gzip bomb and an
// oversized message sent to the port. For each: a clear status (never INTERNAL or UNKNOWN, always
// an error code from the one table), the daemon keeps serving, and a rejected call changes nothing
// (ListKeys / DescribeKey / ListKeyVersions / ListAliases / the ceremony, before and after).
// FUZZ_RUNS sets the runs per RPC (default 25); FUZZ_SEED replays a run.

import fs from 'node:fs';
import http2 from 'node:http2';
import path from 'node:path';
import zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadApi } from '../../src/api/proto';
import { ERROR_TABLE } from '../../src/kms/errors';
import { Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';

const RUNS = Number(process.env.FUZZ_RUNS ?? 25);
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;
const MAX_MESSAGE = 256 * 1024;

let k: Kmsd;
let channel: grpc.Client;
const known: string[] = []; // ids, aliases, blobs, tokens the fuzzer mixes in to reach deeper code

interface Field {
  name: string;
  type: string;
  repeated: boolean;
  typeName?: string;
  /** A proto3 map (its entry type is a nested mapEntry message). */
  map?: boolean;
}

type MessageType = { field: any[]; nestedType?: { name: string; options?: { mapEntry?: boolean } }[] };
function fieldsOf(t: MessageType): Field[] {
  const maps = new Set((t.nestedType ?? []).filter((n) => n.options?.mapEntry).map((n) => n.name));
  return t.field.map((f: any) => ({ name: f.name, type: f.type, repeated: f.label === 'LABEL_REPEATED', typeName: f.typeName, map: maps.has(f.typeName) }));
}
interface Rpc {
  service: string;
  name: string;
  path: string;
  fields: Field[];
  serialize: (v: unknown) => Buffer;
  deserialize: (b: Buffer) => unknown;
}

const def = loadApi().definition as unknown as Record<string, Record<string, any>>;
const RPCS: Rpc[] = [];
for (const svc of ['kms.v1.KeyManagementService', 'kms.v1.CeremonyService', 'kms.v1.AuditService']) {
  for (const [name, m] of Object.entries(def[svc])) {
    RPCS.push({ service: svc.split('.').pop()!, name, path: m.path, fields: fieldsOf(m.requestType.type), serialize: m.requestSerialize, deserialize: m.responseDeserialize });
  }
}

/** Calls that change state; a rejected one must leave the snapshot as it was. */
const MUTATING = new Set([
  'CreateKey',
  'UpdateKeyDescription',
  'EnableKey',
  'DisableKey',
  'ScheduleKeyDeletion',
  'CancelKeyDeletion',
  'UpdateRotationPolicy',
  'CreateAlias',
  'UpdateAlias',
  'DeleteAlias',
  'CreateKeyVersion',
  'ImportKeyMaterial',
  'DeleteKeyMaterial',
  'InitCeremony',
  'CreateProposal',
  'ApproveProposal',
  'ExecuteProposal',
  'CancelProposal',
  'RenewProposal',
  'CreateXksKeyStore',
  'CreateXksCredential',
  'DeleteXksCredential',
  'DeleteXksKeyStore',
  'CreateXksKey',
  'DeleteXksKey',
]);

const CLEAR = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION, grpc.status.ALREADY_EXISTS, grpc.status.PERMISSION_DENIED, grpc.status.RESOURCE_EXHAUSTED, grpc.status.UNAUTHENTICATED]);

interface Outcome {
  ok: boolean;
  code?: grpc.status;
  errorCode?: string;
  details?: string;
  value?: any;
}

function unary(rpc: Rpc, payload: Buffer | object, raw = false): Promise<Outcome> {
  return new Promise((resolve) => {
    const serialize = raw ? (b: Buffer) => b : rpc.serialize;
    channel.makeUnaryRequest(rpc.path, serialize as (v: unknown) => Buffer, rpc.deserialize, payload, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (err, value) => {
      if (!err) return resolve({ ok: true, value });
      resolve({ ok: false, code: err.code, errorCode: err.metadata?.get('kms-error-code')?.[0]?.toString(), details: err.details });
    });
  });
}

const rpc = (name: string) => RPCS.find((r) => r.name === name)!;

async function call(name: string, req: object): Promise<any> {
  const r = await unary(rpc(name), req);
  if (!r.ok) throw new Error(`${name} failed: ${r.errorCode} ${r.details}`);
  return r.value;
}

async function snapshot(): Promise<string> {
  const keys: unknown[] = [];
  for (let page = 1; ; page++) {
    const r = await call('ListKeys', { PageNumber: page, PageSize: 100 });
    for (const key of r.Keys) {
      keys.push((await call('DescribeKey', { KeyId: key.KeyId })).KeyMetadata);
      keys.push((await call('ListKeyVersions', { KeyId: key.KeyId, PageSize: 100 })).KeyVersions);
    }
    if (page * 100 >= r.TotalCount) break;
  }
  const aliases = await call('ListAliases', { PageSize: 100 });
  const ceremony = await call('DescribeCeremony', {});
  const proposals = await call('ListProposals', { PageSize: 100 });
  const xksStores = await call('ListXksKeyStores', {});
  const xksKeys = [];
  for (const st of xksStores.KeyStores) xksKeys.push(await call('ListXksKeys', { UriPathPrefix: st.UriPathPrefix }));
  return JSON.stringify({ keys, aliases, ceremony, proposals, xksStores, xksKeys });
}

async function healthy(): Promise<void> {
  const r = await unary(rpc('ListKeys'), {});
  expect(r.ok, `daemon no longer serving: ${r.details}`).toBe(true);
}

function expectClear(where: string, r: Outcome): void {
  if (r.ok) return;
  // grpc-js's own size limit (a response over KMS_MAX_MESSAGE_BYTES) is clear, though not ours.
  if (r.code === grpc.status.RESOURCE_EXHAUSTED && !r.errorCode && /larger than max/.test(r.details ?? '')) return;
  expect(CLEAR.has(r.code!), `${where}: status ${grpc.status[r.code!]} (${r.errorCode}: ${r.details})`).toBe(true);
  expect(r.errorCode && r.errorCode in ERROR_TABLE, `${where}: error code ${r.errorCode} is not in the error table (${r.details})`).toBe(true);
  expect(r.details, `${where}: no message`).toBeTruthy();
}

// ------------------------------------------------------------------ arbitraries

const nasty = fc.constantFrom('', ' ', '\u0000', 'alias/', 'alias/acs', 'alias/../x', '*', '%s%n', "'; DROP TABLE cmks; --", '\ud800', 'ＡＢＣ', '0'.repeat(100), 'null', '{}', '[]', 'AAAA', '====', 'a'.repeat(5000));
const stringArb = (): fc.Arbitrary<string> => fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 3, arbitrary: fc.constantFrom(...known) },
  { weight: 1, arbitrary: fc.base64String({ maxLength: 200 }) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.stringMatching(/^alias\/[a-z0-9_/-]{1,20}$/) },
  { weight: 2, arbitrary: nasty },
  { weight: 1, arbitrary: fc.constantFrom('Aliyun_KMS', 'EXTERNAL', 'HSM', 'SOFTWARE', 'Aliyun_AES_256', 'ENCRYPT/DECRYPT', 'AES_256', 'AES_128', 'RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5', 'RSA_2048', '7d', '365d', '1s', 'Open', 'DisableKey', 'ScheduleKeyDeletion') },
);
const intArb = fc.oneof(fc.integer({ min: -5, max: 120 }), fc.integer({ min: -2147483648, max: 2147483647 }), fc.constantFrom(0, 1, 7, 366, 1024, 1025, -1, 2147483647, -2147483648));
const int64Arb = fc.oneof(intArb, fc.constantFrom(Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 253402300799, 253402300800, 4102444800), fc.integer({ min: 0, max: 4_000_000_000 }));
const mapArb = fc.oneof(fc.constant({}), fc.dictionary(fc.oneof(fc.string({ maxLength: 12 }), nasty), fc.oneof(fc.string({ maxLength: 20 }), nasty), { maxKeys: 5 }));

function fieldArb(f: Field, depth: number): fc.Arbitrary<unknown> {
  if (f.type === 'TYPE_STRING') return stringArb();
  if (f.type === 'TYPE_INT32') return intArb;
  if (f.type === 'TYPE_INT64') return int64Arb;
  if (f.type === 'TYPE_BOOL') return fc.boolean();
  if (f.type === 'TYPE_MESSAGE' && f.map) return mapArb;
  if (f.type === 'TYPE_MESSAGE') {
    // A nested message (Custodian, the items of a batch): its own fields, one level deep.
    const nested = def[`kms.v1.${f.typeName}`] as unknown as { type: MessageType } | undefined;
    if (!nested || depth > 1) throw new Error(`no arbitrary for ${f.name} ${f.typeName}`);
    const one = messageArb(fieldsOf(nested.type), depth + 1);
    return f.repeated ? fc.array(one, { maxLength: 6 }) : one;
  }
  throw new Error(`no arbitrary for ${f.name} ${f.type}`);
}

function messageArb(fields: Field[], depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const shape: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of fields) shape[f.name] = fieldArb(f, depth);
  return fc.record(shape, { requiredKeys: [] });
}

function requestArb(r: Rpc): fc.Arbitrary<Record<string, unknown>> {
  return messageArb(r.fields);
}

// ------------------------------------------------------------------ the daemon

beforeAll(async () => {
  // A policy that allows everything, so every request also runs through authorization (resource
  // resolution from KeyId, aliases, ciphertext headers and batch items) with hostile fields.
  const policyFile = path.join(makeTempDir('kmsd-fuzz-policy-'), 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({ version: 1, admins: ['anonymous'], custodians: ['anonymous'], grants: [{ principals: ['anonymous'], actions: ['*'], keys: ['*'] }] }));
  k = await startKmsd({ args: ['--policy', policyFile], env: { KMS_MAX_MESSAGE_BYTES: String(MAX_MESSAGE), KMS_WRAPPING_KEY_POOL_SIZE: '1', KMS_LOG_LEVEL: 'info' } });
  fs.rmSync(path.dirname(policyFile), { recursive: true, force: true });
  channel = new grpc.Client(k.endpoint, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 * 1024 * 1024 });
  // A little state for the fuzzer to aim at.
  for (const [level, origin] of [
    ['SOFTWARE', 'Aliyun_KMS'],
    ['HSM', 'Aliyun_KMS'],
    ['HSM', 'EXTERNAL'],
  ]) {
    const m = (await call('CreateKey', { ProtectionLevel: level, Origin: origin })).KeyMetadata;
    known.push(m.KeyId, m.PrimaryKeyVersion);
    if (origin === 'EXTERNAL') {
      const p = await call('GetParametersForImport', { KeyId: m.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
      known.push(p.ImportToken, p.PublicKey);
    } else {
      const e = await call('Encrypt', { KeyId: m.KeyId, Plaintext: Buffer.from('fuzz').toString('base64'), EncryptionContext: { a: 'b' } });
      known.push(e.CiphertextBlob);
    }
  }
  await call('CreateAlias', { AliasName: 'alias/fuzz-target', KeyId: known[0] });
  known.push('alias/fuzz-target', 'alias/does-not-exist');
});

afterAll(async () => {
  channel?.close();
  if (k) {
    const code = await k.stop();
    expect(code).toBe(0);
  }
});

// ------------------------------------------------------------------ properties

describe('every RPC, random request fields', () => {
  for (const r of RPCS) {
    it(`${r.service}.${r.name}: a clear status, the daemon keeps serving, a rejected call changes nothing`, async () => {
      let before = MUTATING.has(r.name) ? await snapshot() : '';
      await fc.assert(
        fc.asyncProperty(requestArb(r), async (req) => {
          const out = await unary(r, req);
          expectClear(`${r.name} ${JSON.stringify(req).slice(0, 300)}`, out);
          if (!MUTATING.has(r.name)) return;
          const after = await snapshot();
          if (!out.ok) expect(after, `${r.name} was rejected (${out.errorCode}) but changed state`).toBe(before);
          before = after;
        }),
        { numRuns: RUNS, seed: SEED, endOnFailure: true },
      );
      await healthy();
    });
  }
});

describe('oversized identifiers', () => {
  // Every identifier field of every unary RPC (and a batch item's KeyId) at 200 KiB: refused at once
  // naming the field, and afterwards the audit log lists, exports and counts as before: nothing the
  // caller sent is kept, logged or counted whole.
  const IDENTIFIERS = ['KeyId', 'DestinationKeyId', 'AliasName', 'KeyVersionId', 'ProposalId', 'CustodianId', 'Requester', 'BatchId'];
  const huge = 'k'.repeat(200 * 1024);
  it('are refused naming the field, and listing, export and counters still answer in full', async () => {
    let sent = 0;
    for (const r of RPCS.filter((x) => !x.name.endsWith('Stream'))) {
      const cases: [string, Record<string, unknown>][] = r.fields.filter((f) => IDENTIFIERS.includes(f.name) && f.type === 'TYPE_STRING').map((f) => [f.name, { [f.name]: huge }]);
      if (r.fields.some((f) => f.name === 'Items')) cases.push(['Items[0].KeyId', { Items: [{ KeyId: huge }] }]);
      for (const [field, req] of cases) {
        const out = await unary(r, req);
        expectClear(`${r.name} ${field}`, out);
        expect(out.ok, `${r.name} with a 200 KiB ${field}`).toBe(false);
        expect(out.errorCode, `${r.name} ${field}: ${out.details}`).toBe('InvalidParameter');
        expect(out.details!.startsWith(`${field}: `), `${r.name}: ${out.details!.slice(0, 200)}`).toBe(true);
        expect(out.details!.length).toBeLessThan(1000);
        sent++;
      }
    }
    expect(sent).toBeGreaterThan(20);

    let total = Infinity;
    for (let page = 1; page * 100 < total + 100; page++) {
      const r = await call('ListAuditEvents', { PageNumber: page, PageSize: 100 });
      total = Math.min(total, r.TotalCount);
      for (const ev of r.Events) expect(JSON.stringify(ev).length).toBeLessThan(40_000);
    }
    let after = 0;
    let upTo = 0;
    for (;;) {
      const page = await call('ExportAudit', { AfterSeq: after, UpToSeq: upTo, MaxRecords: 10_000 });
      upTo = page.UpToSeq;
      if (page.Complete) break;
      expect(page.NextSeq).toBeGreaterThan(after);
      after = page.NextSeq;
    }
    const counters = (await call('GetUsageCounters', {})).Counters as { KeyId: string }[];
    for (const row of counters) expect(row.KeyId.length === 0 || row.KeyId.length === 36, row.KeyId.slice(0, 60)).toBe(true);
    expect(Math.max(0, ...(k.logs().match(/k{1000,}/g) ?? []).map((m) => m.length))).toBe(0);
    await healthy();
  });
});

describe('raw frames', () => {
  it('bytes that are not a protobuf message of the request type: InvalidParameter (or a clear answer if they happen to parse)', async () => {
    const fixed = [
      Buffer.from([0xff]),
      Buffer.from([0x12]),
      Buffer.from([0x08, 0x80]), // truncated varint
      Buffer.from([0x1a, 0x0b, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62]), // map entry longer than the frame
      Buffer.from([0x0b, 0x0b, 0x0b]), // start-group wire types
      Buffer.from([0x0f]), // wire type 7 does not exist
      Buffer.alloc(64, 0xff),
    ];
    let invalid = 0;
    for (const r of RPCS) {
      for (const bytes of fixed) {
        const out = await unary(r, bytes, true);
        expectClear(`${r.name} raw ${bytes.toString('hex').slice(0, 40)}`, out);
        if (!out.ok && out.errorCode === 'InvalidParameter' && /not a valid .* request message/.test(out.details ?? '')) invalid++;
      }
    }
    expect(invalid).toBeGreaterThan(RPCS.length * 3);
    await healthy();
  });

  it('random bytes to every RPC', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...RPCS), fc.uint8Array({ maxLength: 300 }), async (r, bytes) => {
        expectClear(`${r.name} raw`, await unary(r, Buffer.from(bytes), true));
      }),
      { numRuns: RUNS * 8, seed: SEED },
    );
    await healthy();
  });

  it('an oversized message: RESOURCE_EXHAUSTED, then business as usual', async () => {
    const big = await unary(rpc('Encrypt'), { KeyId: known[0], Plaintext: 'A'.repeat(MAX_MESSAGE + 1000) });
    expect(big.ok).toBe(false);
    expect(big.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(big.details).toMatch(/larger than/);
    const huge = await unary(rpc('CreateKey'), Buffer.alloc(8 * 1024 * 1024, 0x41), true);
    expect(huge.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    await healthy();
  });

  it('HTTP/2 level garbage: bad length prefixes, a gzip bomb, unknown methods, a torn connection', async () => {
    const session = http2.connect(`http://${k.endpoint}`);
    const post = (path: string, body: Buffer, headers: Record<string, string> = {}) =>
      new Promise<{ status?: string; message?: string }>((resolve) => {
        const s = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
        let trailers: http2.IncomingHttpHeaders = {};
        s.on('response', (h) => {
          if (h['grpc-status']) trailers = h;
        });
        s.on('trailers', (t) => (trailers = t));
        s.on('close', () => resolve({ status: trailers['grpc-status'] as string, message: trailers['grpc-message'] as string }));
        s.on('error', () => resolve({}));
        s.resume();
        s.end(body);
      });
    const frame = (flag: number, declared: number, payload: Buffer) => {
      const h = Buffer.alloc(5);
      h[0] = flag;
      h.writeUInt32BE(declared, 1);
      return Buffer.concat([h, payload]);
    };
    const path = rpc('DescribeKey').path;
    // Declares 100 bytes, sends 3, ends the stream.
    const short = await post(path, frame(0, 100, Buffer.from('abc')));
    expect(short.status).toBeDefined();
    // Declares 2 GiB: refused by size, not buffered.
    const hugeDeclared = await post(path, frame(0, 0x7fffffff, Buffer.from('abc')));
    expect(hugeDeclared.status).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
    // A gzip bomb: decompression stops at the size limit.
    const bomb = zlib.gzipSync(Buffer.alloc(MAX_MESSAGE * 8));
    const gz = await post(path, frame(1, bomb.length, bomb), { 'grpc-encoding': 'gzip' });
    expect(gz.status).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
    // Unknown method.
    const unknown = await post('/kms.v1.KeyManagementService/NoSuchAction', frame(0, 0, Buffer.alloc(0)));
    expect(unknown.status).toBe(String(grpc.status.UNIMPLEMENTED));
    // A stream reset halfway.
    const s = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
    s.on('error', () => undefined);
    s.write(frame(0, 50, Buffer.from('partial')));
    s.close(http2.constants.NGHTTP2_CANCEL);
    session.close();
    // A connection that sends a preface and garbage.
    await new Promise<void>((resolve) => {
      const sock = require('node:net').connect(k.port, '127.0.0.1', () => {
        sock.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + '\u0000'.repeat(9) + 'garbage garbage garbage');
        setTimeout(() => {
          sock.destroy();
          resolve();
        }, 200);
      });
      sock.on('error', () => resolve());
    });
    await healthy();
    expect(k.logs()).not.toMatch(/"msg":"internal error"/);
  });

  it('batch streams that send and never read: the ones over the limit are refused with RESOURCE_EXHAUSTED, the daemon keeps serving', async () => {
    const session = http2.connect(`http://${k.endpoint}`, { maxSessionMemory: 256 });
    session.on('error', () => undefined);
    const m = def['kms.v1.KeyManagementService'].EncryptStream;
    const items = Array.from({ length: 24 }, () => ({ KeyId: known[0], Plaintext: Buffer.alloc(6 * 1024, 0x62).toString('base64') }));
    const body = m.requestSerialize({ BatchId: 'unread', Items: items }) as Buffer;
    const head = Buffer.alloc(5);
    head.writeUInt32BE(body.length, 1);
    const frame = Buffer.concat([head, body]);
    // More streams than one connection may hold open (KMS_STREAM_MAX_PER_CONNECTION, 16 by default).
    const streams = Array.from({ length: 20 }, () => {
      const s = session.request({ ':method': 'POST', ':path': m.path, 'content-type': 'application/grpc', te: 'trailers' });
      s.on('error', () => undefined);
      const headers = new Promise<http2.IncomingHttpHeaders>((resolve) => {
        s.once('response', resolve);
        s.once('close', () => resolve({}));
      });
      s.write(frame); // and never read what comes back
      return { s, headers };
    });
    const answered = await Promise.all(streams.map((x) => x.headers));
    const refused = answered.filter((h) => h['grpc-status'] === String(grpc.status.RESOURCE_EXHAUSTED));
    expect(refused.length).toBe(4);
    for (const h of refused) expect(decodeURIComponent(String(h['grpc-message']))).toMatch(/limit is 16 \(KMS_STREAM_MAX_PER_CONNECTION\)/);
    await healthy();
    for (const x of streams) x.s.close(http2.constants.NGHTTP2_CANCEL);
    session.close();
    await healthy();
    expect(k.logs()).not.toMatch(/"msg":"internal error"/);
  });
});
