// kmsctl: the operator CLI. `kmsctl [--endpoint HOST:PORT[,HOST:PORT...]] [--ca F --cert F --key F] <Action> [--Param value ...]`
// Actions and parameter names are the Alibaba Cloud KMS API's. Each --Param is converted by the
// type of that field in the request message (string, integer, boolean, or a JSON map), so every
// RPC of the service is an action here without a table to keep in step.
// Success: the response as JSON on stdout, exit 0. Failure: {"Code","Message"} on stderr, exit 1;
// usage errors exit 2. VerifyAudit prints its verdict and exits 1 when the log does not verify.

// Start-up time matters (ceremony scripts call kmsctl dozens of times): actions and their
// parameters come from the precompiled descriptor (src/client/descriptor.ts), and a call goes
// through the light client (node:http2, messages encoded from the descriptor), not grpc-js.

import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { SERVICE_NAMES, lookupType, serviceMethods, serviceOf } from '../client/descriptor';
import { CEREMONY_CLI_ACTIONS, CEREMONY_USAGE, runCeremonyCli } from './kmsctl-ceremony';
import { endpointsOf } from '../client/basics';

class UsageError extends Error {}

interface FieldInfo {
  name: string;
  type: string;
  repeated: boolean;
  /** A repeated message field that is not a map (e.g. EncryptBatch's Items): a JSON array of objects. */
  list?: boolean;
}

const SCALARS = new Set(['double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64', 'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool', 'string', 'bytes']);

function requestFields(action: string): FieldInfo[] {
  // Every service's RPCs are actions (KeyManagementService, CeremonyService, AuditService; names are unique).
  const service = serviceOf(action);
  const method = service ? serviceMethods(service)[action] : undefined;
  if (!method) throw new UsageError(`unknown action "${action}" (kmsctl --help lists them)`);
  if (method.requestStream) throw new UsageError(`${action} is a stream; kmsctl sends one batch with ${action.replace('Stream', 'Batch')}`);
  const fields = lookupType(method.requestType)?.fields ?? {};
  // Field kinds in descriptor.proto's words (TYPE_STRING, ...), which convert() speaks.
  return Object.entries(fields).map(([name, f]) => {
    const repeated = f.rule === 'repeated';
    if (f.keyType) return { name, type: 'TYPE_MESSAGE', repeated: true }; // a map (EncryptionContext)
    if (SCALARS.has(f.type)) return { name, type: `TYPE_${f.type.toUpperCase()}`, repeated };
    // A type nested in the request message, or one of the package.
    const t = lookupType(`${method.requestType}.${f.type}`) ?? lookupType(f.type);
    if (t?.values) return { name, type: 'TYPE_ENUM', repeated };
    return { name, type: 'TYPE_MESSAGE', repeated, ...(repeated ? { list: true } : {}) };
  });
}

/** Parameters kmsctl itself understands on top of the API's, per action. */
const LOCAL_PARAMS: Record<string, string[]> = {
  GetParametersForImport: ['OutputDir'],
};

function convert(action: string, field: FieldInfo, raw: string): unknown {
  switch (field.type) {
    case 'TYPE_STRING':
      return raw;
    case 'TYPE_INT32':
    case 'TYPE_INT64': {
      if (!/^-?\d+$/.test(raw)) throw new UsageError(`--${field.name}: expected an integer (got "${raw}")`);
      // protobufjs wraps an out-of-range int32 silently (4294967303 arrives as 7), so a typo could
      // schedule a deletion with the shortest window: refuse anything the field cannot hold.
      const n = Number(raw);
      const ok = field.type === 'TYPE_INT32' ? Number.isInteger(n) && n >= -2147483648 && n <= 2147483647 : Number.isSafeInteger(n);
      if (!ok) throw new UsageError(`--${field.name}: ${raw} is out of range for a ${field.type === 'TYPE_INT32' ? '32' : '64'}-bit integer`);
      return n;
    }
    case 'TYPE_BOOL':
      if (!['true', 'false'].includes(raw)) throw new UsageError(`--${field.name}: expected true or false (got "${raw}")`);
      return raw === 'true';
    case 'TYPE_MESSAGE':
      if (field.list) {
        // A list of messages (EncryptBatch/DecryptBatch --Items) takes a JSON array of objects
        // with the API's field names: --Items '[{"KeyId":"…","Plaintext":"aGk="}]'.
        let parsed: unknown;
        try {
          parsed = JSON.parse(raw);
        } catch {
          throw new UsageError(`--${field.name}: expected a JSON array of objects such as '[{"KeyId":"…"}]'`);
        }
        if (!Array.isArray(parsed) || parsed.some((x) => !x || typeof x !== 'object' || Array.isArray(x))) {
          throw new UsageError(`--${field.name}: expected a JSON array of objects`);
        }
        return parsed;
      }
      if (field.repeated) {
        // Map fields (EncryptionContext) take a JSON object of strings, as in the Alibaba CLI.
        let parsed: unknown;
        try {
          parsed = JSON.parse(raw);
        } catch {
          throw new UsageError(`--${field.name}: expected a JSON object such as '{"k":"v"}'`);
        }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || Object.values(parsed).some((x) => typeof x !== 'string')) {
          throw new UsageError(`--${field.name}: expected a JSON object whose values are strings`);
        }
        return parsed;
      }
      throw new UsageError(`--${field.name}: not settable from the command line in ${action}`);
    default:
      throw new UsageError(`--${field.name}: unsupported field type ${field.type}`);
  }
}

const USAGE = (actions: string[]) => `usage: kmsctl [--endpoint HOST:PORT[,HOST:PORT...]] [--ca FILE [--cert FILE --key FILE]] <Action> [--Param value ...]

Endpoint: --endpoint, else KMS_ENDPOINT, else 127.0.0.1:50051. TLS: --ca/--cert/--key or KMS_CA/KMS_CERT/KMS_KEY
(the same for every endpoint). Several endpoints (replicas), comma-separated: the call goes to the first
that can be reached. One that refuses the connection is skipped for every action; one whose connection
drops mid-call (or that answers ServiceUnavailable) is skipped only for reads and data-plane calls
(Encrypt, Decrypt, GenerateDataKey*, Describe*, List*, Get*), never for a call that may have run there
(CreateKey, ImportKeyMaterial, ...): that one fails UNAVAILABLE and you check before running it again.
Binary values (Plaintext, CiphertextBlob, EncryptedKeyMaterial, PublicKey) are base64.
EncryptionContext takes a JSON object: --EncryptionContext '{"purpose":"backup"}'.
EncryptBatch/DecryptBatch take --Items as a JSON array of Encrypt/Decrypt requests (at most 256):
--Items '[{"KeyId":"alias/app","Plaintext":"aGk="}]'; each result has Code/Message when that item failed.
GetParametersForImport also takes --OutputDir DIR, writing publickey_<KeyId>.bin (DER),
publickey_<KeyId>.pem and token_<KeyId>.txt there (refusing to overwrite).

Actions:
  ${actions.join('\n  ')}
`;

function writeNew(file: string, data: string | Buffer): void {
  // 'wx' refuses to overwrite: a ceremony never silently replaces an artifact.
  fs.writeFileSync(file, data, { flag: 'wx', mode: 0o644 });
}

function writeImportParameters(dir: string, res: { KeyId: string; PublicKey: string; ImportToken: string }): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const der = Buffer.from(res.PublicKey, 'base64');
  const pem = crypto.createPublicKey({ key: der, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string;
  const files = [path.join(dir, `publickey_${res.KeyId}.bin`), path.join(dir, `publickey_${res.KeyId}.pem`), path.join(dir, `token_${res.KeyId}.txt`)];
  for (const f of files) if (fs.existsSync(f)) throw new UsageError(`--OutputDir: ${f} already exists; refusing to overwrite`);
  writeNew(files[0], der);
  writeNew(files[1], pem);
  writeNew(files[2], res.ImportToken);
  return files;
}

export async function run(argv: string[]): Promise<number> {
  const opts: { endpoint?: string; endpointSource?: string; caFile?: string; certFile?: string; keyFile?: string } = {};
  let i = 0;
  const globals: Record<string, keyof typeof opts> = { '--endpoint': 'endpoint', '--ca': 'caFile', '--cert': 'certFile', '--key': 'keyFile' };
  for (; i < argv.length && argv[i].startsWith('--') && globals[argv[i]]; i += 2) {
    if (argv[i + 1] === undefined) throw new UsageError(`${argv[i]} needs a value`);
    opts[globals[argv[i]]] = argv[i + 1];
  }
  opts.endpointSource = '--endpoint';
  const action = argv[i++];
  if (!action || action === '--help' || action === '-h' || action === 'help') {
    const names = SERVICE_NAMES.flatMap((svc) => Object.keys(serviceMethods(svc)));
    process.stdout.write(USAGE([...names, 'SignProposal']) + '\n' + CEREMONY_USAGE + '\n');
    return action ? 0 : 2;
  }
  try {
    endpointsOf(opts); // a malformed --endpoint or KMS_ENDPOINT is a usage error, before any call
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (CEREMONY_CLI_ACTIONS.includes(action)) return runCeremonyCli(action, argv.slice(i), opts); // file-reading actions
  const fields = requestFields(action);
  const request: Record<string, unknown> = {};
  const local: Record<string, string> = {};
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument "${a}" (parameters are --Name value)`);
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new UsageError(`--${name} needs a value`);
    if (LOCAL_PARAMS[action]?.includes(name)) {
      local[name] = value;
      continue;
    }
    const field = fields.find((f) => f.name === name);
    if (!field) throw new UsageError(`${action} has no parameter --${name} (it takes ${fields.map((f) => `--${f.name}`).join(', ') || 'none'})`);
    if (name in request) throw new UsageError(`--${name} given twice`);
    request[name] = convert(action, field, value);
  }
  const { LightClient } = await import('../client/light-client');
  const client = new LightClient(opts);
  try {
    const res = (await client.call(action, request)) as Record<string, unknown>;
    if (local.OutputDir) {
      const files = writeImportParameters(local.OutputDir, res as { KeyId: string; PublicKey: string; ImportToken: string });
      res.Files = files;
    }
    process.stdout.write(JSON.stringify(res, null, 2) + '\n');
    // A check that fails is a failure of the command, verdict printed all the same.
    if (action === 'VerifyAudit' && res.Valid !== true) return 1;
    return 0;
  } finally {
    client.close();
  }
}

/** The process entry point (bin/kmsctl.js calls it, so it works through npm's .bin symlink too). */
export function main(): void {
  run(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      if (e instanceof UsageError) {
        process.stderr.write(`kmsctl: ${e.message}\n`);
        process.exit(2);
      }
      // By name: the client module is not loaded unless a call was made.
      const out = (e as Error)?.name === 'KmsClientError' ? { Code: e.code, Message: e.message, RequestId: e.requestId } : { Code: 'ClientError', Message: (e as Error).message };
      process.stderr.write(JSON.stringify(out) + '\n');
      process.exit(1);
    },
  );
}

if (require.main === module) main();
