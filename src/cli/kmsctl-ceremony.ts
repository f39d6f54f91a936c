// kmsctl actions of ceremonies that need more than the generic --Param conversion:
//   InitCeremony    --Custodians alice=alice.pub,bob=bob.pub,... --Threshold M   (reads the PEM files)
//   CreateProposal  --Action X [--Requester NAME] [--ExpiresInSeconds N] [--OutputFile proposal.json]
//                   and X's own parameters (--KeyId ..., --EncryptedKeyMaterial ..., ...); for
//                   SetCustodians --Custodians id=file.pub,... --Threshold M; for SetQuorumPolicy
//                   --Policy JSON (or @file.json)
//   GetProposal     --ProposalId ID [--OutputFile proposal.json]    (writes the exact bytes to sign)
//   SignProposal    --KeyFile alice.pem (--DocumentFile proposal.json | --ProposalId ID)
//                   signs locally; with --DocumentFile it never contacts kmsd
//   ApproveProposal --ProposalId ID --CustodianId alice (--Signature BASE64 | --SignatureFile alice.sig)
//   ExportAudit     --OutputFile audit.jsonl   (all pages, verifiable offline)
// Output files are never overwritten.

import fs from 'node:fs';
import crypto from 'node:crypto';
import type { LightClient } from '../client/light-client';
import type { ClientOptions } from '../client/basics';

export const CEREMONY_CLI_ACTIONS = ['InitCeremony', 'CreateProposal', 'GetProposal', 'SignProposal', 'ApproveProposal', 'ExportAudit'];

export const CEREMONY_USAGE = `Ceremony actions (docs/ceremony.md):
  InitCeremony --Custodians alice=alice.pub,bob=bob.pub,carol=carol.pub --Threshold 2
  CreateProposal --Action ImportKeyMaterial --KeyId ID --EncryptedKeyMaterial B64 --ImportToken T [--OutputFile proposal.json]
  CreateProposal --Action SetCustodians --Custodians alice=alice.pub,dave=dave.pub --Threshold 2
  SignProposal --KeyFile alice.pem --DocumentFile proposal.json     (offline; or --ProposalId ID)
  ApproveProposal --ProposalId ID --CustodianId alice --Signature B64 (or --SignatureFile alice.sig)
  ExecuteProposal --ProposalId ID
  ExportAudit --OutputFile audit.jsonl`;

class CeremonyUsageError extends Error {}

function parseArgs(args: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) throw new CeremonyUsageError(`unexpected argument "${a}" (parameters are --Name value)`);
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    const value = eq > 0 ? a.slice(eq + 1) : args[++i];
    if (value === undefined) throw new CeremonyUsageError(`--${name} needs a value`);
    if (m.has(name)) throw new CeremonyUsageError(`--${name} given twice`);
    m.set(name, value);
  }
  return m;
}

function take(m: Map<string, string>, name: string, required: true): string;
function take(m: Map<string, string>, name: string, required?: false): string | undefined;
function take(m: Map<string, string>, name: string, required = false): string | undefined {
  const v = m.get(name);
  m.delete(name);
  if (required && (v === undefined || v === '')) throw new CeremonyUsageError(`--${name} is required`);
  return v;
}

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d{1,15}$/.test(v)) throw new CeremonyUsageError(`--${name}: expected an integer (got "${v}")`);
  return Number(v);
}

function noneLeft(action: string, m: Map<string, string>): void {
  if (m.size) throw new CeremonyUsageError(`${action} has no parameter ${[...m.keys()].map((k) => `--${k}`).join(', ')}`);
}

function readFile(name: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new CeremonyUsageError(`--${name}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

function alreadyThere(name: string, file: string): CeremonyUsageError {
  return new CeremonyUsageError(`--${name}: ${file} already exists; refusing to overwrite`);
}

/** Refuses an output file that exists before any call is made (writeNew checks again when writing). */
function refuseExisting(name: string, file: string | undefined): void {
  if (file && fs.existsSync(file)) throw alreadyThere(name, file);
}

function writeNew(name: string, file: string, data: string | Buffer): void {
  try {
    fs.writeFileSync(file, data, { flag: 'wx', mode: 0o644 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw alreadyThere(name, file);
    throw e;
  }
}

/** --OutputFile of CreateProposal and GetProposal: the document's exact bytes, the ones custodians sign. */
function saveDocument(res: Record<string, unknown>, outputFile: string | undefined): Record<string, unknown> {
  if (outputFile) {
    writeNew('OutputFile', outputFile, Buffer.from(res.Document as string, 'base64'));
    res.DocumentFile = outputFile;
  }
  return res;
}

/** "alice=alice.pub,bob=bob.pub" → [[alice, PEM text], ...] */
function custodianFiles(name: string, v: string): { id: string; pem: string }[] {
  return v.split(',').map((entry) => {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new CeremonyUsageError(`--${name}: expected id=public-key-file[,id=file...] (got "${entry}")`);
    return { id: entry.slice(0, eq).trim(), pem: readFile(name, entry.slice(eq + 1).trim()).toString('utf8') };
  });
}

function pemToDerBase64(name: string, id: string, pem: string): string {
  try {
    return crypto.createPublicKey({ key: pem, format: 'pem' }).export({ type: 'spki', format: 'der' }).toString('base64');
  } catch {
    throw new CeremonyUsageError(`--${name}: the file for ${id} is not a PEM public key`);
  }
}

export async function runCeremonyCli(action: string, args: string[], opts: ClientOptions): Promise<number> {
  let m: Map<string, string>;
  try {
    m = parseArgs(args);
    if (action === 'SignProposal' && !m.has('ProposalId')) {
      // Offline: no connection at all.
      process.stdout.write(JSON.stringify(signLocal(m), null, 2) + '\n');
      return 0;
    }
  } catch (e) {
    if (e instanceof CeremonyUsageError) return usage(e);
    throw e;
  }
  const client = new (await import('../client/light-client')).LightClient(opts); // loaded only when needed
  try {
    const out = await dispatch(action, m, client);
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    return 0;
  } catch (e) {
    if (e instanceof CeremonyUsageError) return usage(e);
    throw e;
  } finally {
    client.close();
  }
}

function usage(e: Error): number {
  process.stderr.write(`kmsctl: ${e.message}\n`);
  return 2;
}

function signDocument(keyFile: string, document: Buffer) {
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey(readFile('KeyFile', keyFile));
  } catch (e) {
    if (e instanceof CeremonyUsageError) throw e;
    throw new CeremonyUsageError(`--KeyFile: ${keyFile} is not a PEM private key`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new CeremonyUsageError(`--KeyFile: a custodian key is Ed25519 (got ${key.asymmetricKeyType})`);
  let doc: { ProposalId?: string; Revision?: number; Action?: string; Format?: string };
  try {
    doc = JSON.parse(document.toString('utf8'));
  } catch {
    throw new CeremonyUsageError('the document is not a kmsd proposal (not JSON)');
  }
  if (doc.Format !== 'kmsd-proposal/v1') throw new CeremonyUsageError('the document is not a kmsd proposal (Format is not kmsd-proposal/v1)');
  const signature = crypto.sign(null, document, key);
  return { ProposalId: doc.ProposalId ?? '', Revision: doc.Revision ?? 0, Action: doc.Action ?? '', DocumentSha256: crypto.createHash('sha256').update(document).digest('hex'), Signature: signature.toString('base64') };
}

function signLocal(m: Map<string, string>) {
  const keyFile = take(m, 'KeyFile', true);
  const docFile = take(m, 'DocumentFile');
  const docB64 = take(m, 'Document');
  noneLeft('SignProposal', m);
  if (!docFile && !docB64) throw new CeremonyUsageError('SignProposal needs --DocumentFile FILE (offline), --Document BASE64, or --ProposalId ID');
  const document = docFile ? readFile('DocumentFile', docFile) : Buffer.from(docB64 as string, 'base64');
  return signDocument(keyFile, document);
}

async function dispatch(action: string, m: Map<string, string>, client: LightClient): Promise<unknown> {
  switch (action) {
    case 'InitCeremony': {
      const custodians = custodianFiles('Custodians', take(m, 'Custodians', true));
      const threshold = int('Threshold', take(m, 'Threshold', true));
      noneLeft(action, m);
      return client.call('InitCeremony', { Custodians: custodians.map((c) => ({ CustodianId: c.id, PublicKey: c.pem })), Threshold: threshold });
    }
    case 'CreateProposal': {
      const target = take(m, 'Action', true);
      const requester = take(m, 'Requester');
      const expires = int('ExpiresInSeconds', take(m, 'ExpiresInSeconds'));
      const outputFile = take(m, 'OutputFile');
      refuseExisting('OutputFile', outputFile);
      const params: Record<string, string> = {};
      for (const [k, val] of m) params[k] = val;
      if (target === 'SetCustodians' && params.Custodians) {
        params.Custodians = custodianFiles('Custodians', params.Custodians)
          .map((c) => `${c.id}=${pemToDerBase64('Custodians', c.id, c.pem)}`)
          .join(',');
      }
      if (target === 'SetQuorumPolicy' && params.Policy?.startsWith('@')) params.Policy = readFile('Policy', params.Policy.slice(1)).toString('utf8');
      return saveDocument((await client.call('CreateProposal', { Action: target, Parameters: params, Requester: requester ?? '', ExpiresInSeconds: expires ?? 0 })) as Record<string, unknown>, outputFile);
    }
    case 'GetProposal': {
      const id = take(m, 'ProposalId', true);
      const outputFile = take(m, 'OutputFile');
      noneLeft(action, m);
      refuseExisting('OutputFile', outputFile);
      return saveDocument((await client.call('GetProposal', { ProposalId: id })) as Record<string, unknown>, outputFile);
    }
    case 'SignProposal': {
      const id = take(m, 'ProposalId', true);
      const keyFile = take(m, 'KeyFile', true);
      noneLeft(action, m);
      const res = (await client.call('GetProposal', { ProposalId: id })) as Record<string, unknown>;
      return signDocument(keyFile, Buffer.from(res.Document as string, 'base64'));
    }
    case 'ApproveProposal': {
      const id = take(m, 'ProposalId', true);
      const custodian = take(m, 'CustodianId', true);
      let signature = take(m, 'Signature');
      const sigFile = take(m, 'SignatureFile');
      noneLeft(action, m);
      if (!signature === !sigFile) throw new CeremonyUsageError('ApproveProposal needs exactly one of --Signature BASE64 and --SignatureFile FILE');
      if (sigFile) {
        const raw = readFile('SignatureFile', sigFile);
        // openssl pkeyutl writes the raw 64 bytes; accept a base64 text file too.
        signature = raw.length === 64 ? raw.toString('base64') : raw.toString('utf8').trim();
      }
      return client.call('ApproveProposal', { ProposalId: id, CustodianId: custodian, Signature: signature });
    }
    case 'ExportAudit': {
      const outputFile = take(m, 'OutputFile', true);
      noneLeft(action, m);
      refuseExisting('OutputFile', outputFile);
      const lines: string[] = [];
      let header = '';
      let after = 0;
      let upTo = 0;
      for (;;) {
        const page = (await client.call('ExportAudit', { AfterSeq: after, UpToSeq: upTo, MaxRecords: 1000 })) as { Header: string; Lines: string[]; NextSeq: number; UpToSeq: number; Complete: boolean };
        header ||= page.Header;
        upTo = page.UpToSeq;
        lines.push(...(page.Lines ?? []));
        if (page.Complete || page.NextSeq <= after) break;
        after = page.NextSeq;
      }
      writeNew('OutputFile', outputFile, [header, ...lines].join('\n') + '\n');
      const h = JSON.parse(header) as { PublicKeyFingerprint: string; InstanceId: string };
      return { OutputFile: outputFile, Records: lines.length, UpToSeq: upTo, InstanceId: h.InstanceId, PublicKeyFingerprint: h.PublicKeyFingerprint };
    }
    default:
      throw new CeremonyUsageError(`unknown ceremony action ${action}`);
  }
}
