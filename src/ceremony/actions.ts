// The CMK actions a proposal can carry, with their parameters as the API names them. A proposal's
// parameters arrive as strings (a map in the API); they are typed and checked here when the
// proposal is created, so custodians never sign something that cannot run, and the document shows
// each value (or its SHA-256 where large or binary) for review.

import crypto from 'node:crypto';
import type { KmsService } from '../kms/service';
import type { ImportService } from '../kms/import';
import type { XksService } from '../kms/xks';
import { KmsError, invalid, missing } from '../kms/errors';
import * as v from '../kms/validate';
import type { CallContext } from '../kms/types';
import { GUARDABLE_ACTIONS, GuardableAction } from './policy';

export interface ActionTargets {
  kms: KmsService;
  imports: ImportService;
  /** The external key store proxy, when the daemon has one. */
  xks?: XksService;
}

type ParamKind = 'string' | 'int' | 'base64';

interface ParamSpec {
  kind: ParamKind;
  required?: boolean;
}

interface KeyActionSpec {
  params: Record<string, ParamSpec>;
  /** `ctx.record` (when set) runs in the transaction that makes the action's change. */
  run(t: ActionTargets, req: Record<string, unknown>, ctx?: CallContext): unknown;
}

/** Strings longer than this appear in the document as their SHA-256. */
const INLINE_MAX = 96;

export const KEY_ACTIONS: Record<GuardableAction, KeyActionSpec> = {
  ImportKeyMaterial: {
    params: { KeyId: { kind: 'string', required: true }, EncryptedKeyMaterial: { kind: 'base64', required: true }, ImportToken: { kind: 'string', required: true }, KeyMaterialExpireUnix: { kind: 'int' } },
    run: (t, r, c) => t.imports.ImportKeyMaterial(r, c),
  },
  DeleteKeyMaterial: { params: { KeyId: { kind: 'string', required: true } }, run: (t, r, c) => t.imports.DeleteKeyMaterial(r, c) },
  ScheduleKeyDeletion: {
    params: { KeyId: { kind: 'string', required: true }, PendingWindowInDays: { kind: 'int', required: true } },
    run: (t, r, c) => t.kms.ScheduleKeyDeletion(r, c),
  },
  CancelKeyDeletion: { params: { KeyId: { kind: 'string', required: true } }, run: (t, r, c) => t.kms.CancelKeyDeletion(r, c) },
  DisableKey: { params: { KeyId: { kind: 'string', required: true } }, run: (t, r, c) => t.kms.DisableKey(r, c) },
  EnableKey: { params: { KeyId: { kind: 'string', required: true } }, run: (t, r, c) => t.kms.EnableKey(r, c) },
  UpdateKeyDescription: {
    params: { KeyId: { kind: 'string', required: true }, Description: { kind: 'string', required: true } },
    run: (t, r, c) => t.kms.UpdateKeyDescription(r, c),
  },
  CreateKeyVersion: { params: { KeyId: { kind: 'string', required: true } }, run: (t, r, c) => t.kms.CreateKeyVersion(r, c) },
  CreateXksKey: {
    params: { KeyId: { kind: 'string', required: true }, UriPathPrefix: { kind: 'string', required: true }, ExternalKeyId: { kind: 'string', required: true }, Operations: { kind: 'string', required: true } },
    run: (t, r, c) => {
      if (!t.xks) throw new KmsError('InternalFailure', 'external key stores are not configured in this server');
      return t.xks.CreateXksKey(r, c);
    },
  },
};

export function isKeyAction(action: string): action is GuardableAction {
  return (GUARDABLE_ACTIONS as readonly string[]).includes(action);
}

export interface PreparedKeyAction {
  keyId: string;
  /** Typed request for the domain call, KeyId resolved to the CMK id (an alias can be re-pointed later). */
  request: Record<string, unknown>;
  /** What the document shows. */
  view: Record<string, unknown>;
  /** The CMK as the custodians should see it. */
  key: Record<string, unknown>;
}

export function digestView(value: string, kind: ParamKind): { Sha256: string; Bytes: number } {
  const bytes = kind === 'base64' ? Buffer.from(value, 'base64') : Buffer.from(value, 'utf8');
  return { Sha256: crypto.createHash('sha256').update(bytes).digest('hex'), Bytes: bytes.length };
}

export async function prepareKeyAction(t: ActionTargets, action: GuardableAction, params: Record<string, string>): Promise<PreparedKeyAction> {
  const spec = KEY_ACTIONS[action];
  for (const name of Object.keys(params)) {
    if (!spec.params[name]) throw invalid(`Parameters.${name}`, `${action} takes ${Object.keys(spec.params).join(', ')}`);
  }
  const request: Record<string, unknown> = {};
  const view: Record<string, unknown> = {};
  for (const [name, p] of Object.entries(spec.params)) {
    const raw = params[name];
    if (raw === undefined || raw === '') {
      if (p.required) throw missing(`Parameters.${name}`);
      continue;
    }
    if (p.kind === 'int') {
      if (!/^-?\d{1,15}$/.test(raw)) throw invalid(`Parameters.${name}`, `must be an integer (got "${raw.slice(0, 40)}")`);
      request[name] = Number(raw);
      view[name] = Number(raw);
    } else {
      if (p.kind === 'base64') v.base64(`Parameters.${name}`, raw, { maxBytes: 16 * 1024 });
      request[name] = raw;
      view[name] = p.kind === 'base64' || raw.length > INLINE_MAX ? digestView(raw, p.kind) : raw;
    }
  }
  const row = await t.kms.resolve('Parameters.KeyId', request.KeyId as string);
  request.KeyId = row.key_id;
  view.KeyId = row.key_id;
  return {
    keyId: row.key_id,
    request,
    view,
    key: { KeyId: row.key_id, KeyState: row.key_state, Origin: row.origin, ProtectionLevel: row.protection_level, Description: row.description },
  };
}

export function runKeyAction(t: ActionTargets, action: string, request: Record<string, unknown>, ctx?: CallContext): unknown {
  if (!isKeyAction(action)) throw new KmsError('InternalFailure', `proposal action ${action} has no executor`);
  return KEY_ACTIONS[action].run(t, request, ctx);
}

/** Parameters kept after a proposal closes: the document's view (hashes instead of material). */
export function scrubbedParameters(action: string, request: Record<string, unknown>): Record<string, unknown> {
  if (!isKeyAction(action)) return request;
  const spec = KEY_ACTIONS[action];
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(request)) {
    const p = spec.params[k];
    out[k] = p && typeof val === 'string' && (p.kind === 'base64' || val.length > INLINE_MAX) ? digestView(val, p.kind) : val;
  }
  return out;
}
