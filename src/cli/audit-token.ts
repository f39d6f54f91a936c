// audit-token: an independent check of kmsd's token (npm run audit-token). It lists the token
// through graphene-pk11 (src/hsm/token-audit.ts), checks every object against its role, and
// cross-checks the token against kmsd's metadata store (SQLite in the data directory, or PostgreSQL
// with --store), opened read-only through src/store. It creates, changes and destroys nothing in either.
//
// Exit 0: clean; 1: findings (the JSON report on stdout says which); 2: usage error (nothing was
// opened); 3: the token or the store could not be read.

import fs from 'node:fs';
import { AUDIT_USAGE, AuditConfig, ConfigError, PostgresStoreConfig, loadAuditConfig, useSoftHsmConf } from '../config';
import { DEV_TOKEN_LABEL, devTokenPaths, findSoftHsmModule, readPinFile } from '../hsm/dev-token';
import { AuditedObject, TokenAuditError, TokenListing, checkAttributes, listToken, roleRulesFor } from '../hsm/token-audit';
import { PgStore } from '../store/pg/pg-store';
import { SqliteDb, type CmkRow, type KeyVersionRow, type WrappingKeyRow, type TokenIntentRow, type TokenDestroyRow } from '../store/store';
import { ROOT_KEY_ID } from '../kms/keyring';
import { MAC_KEY_ID } from '../kms/import';
import { AUDIT_SIGNING_KEY_ID } from '../ceremony/setup';

/** What the store says the token should hold. */
export interface StoreView {
  instanceId: string | undefined;
  tokenSequence: number;
  cmks: CmkRow[];
  versions: KeyVersionRow[];
  wrappingKeys: WrappingKeyRow[];
  intents: TokenIntentRow[];
  pendingDestroys: TokenDestroyRow[];
}

export type FindingKind =
  | 'foreign-object' // not labelled kmsd:...; kmsd's token should hold kmsd's objects only
  | 'unknown-kind' // labelled kmsd:... but of no kind kmsd makes (or of the wrong class for it)
  | 'attributes' // a security attribute or usage differs from what the role requires
  | 'label-id-mismatch' // CKA_ID is not the id in the label
  | 'duplicate' // two objects for one role and id
  | 'orphan' // a kmsd object the store does not explain
  | 'missing' // the store claims an object the token does not hold
  | 'instance'; // the store/token binding object is absent, doubled, or names another store

export interface Finding {
  kind: FindingKind;
  /** The token object's label, or the store's name for what is missing. */
  object: string;
  detail: string;
  mismatches?: { attribute: string; expected: unknown; actual: unknown }[];
}

/** Objects the store accounts for although it does not claim them: kmsd resolves these itself at its next start. */
export interface Explained {
  object: string;
  reason: 'open-intent' | 'pending-destroy';
  present: boolean;
}

export interface AuditReport {
  clean: boolean;
  token: TokenListing['token'];
  dataDir: string;
  summary: { objects: number; findings: number; explained: number; byRole: Record<string, number> };
  findings: Finding[];
  explained: Explained[];
  objects: AuditedObject[];
}

/** The cross-check: every object against its role and against the store. Pure: it reads nothing. */
export function auditListing(listing: TokenListing, store: StoreView, opts: { allowForeignObjects: boolean; dataDir: string }): AuditReport {
  const findings: Finding[] = [];
  const explained: Explained[] = [];
  const rules = roleRulesFor(listing.token.capabilities);
  const cmks = new Map(store.cmks.map((r) => [r.key_id, r]));
  const wraps = new Map(store.wrappingKeys.map((w) => [w.wrap_id, w]));
  // An HSM version claims its token object until its material is gone on purpose (Absent), as kmsd's reconciliation counts it.
  const claimedCmk = new Map<string, { version: KeyVersionRow; cmk: CmkRow }>();
  for (const v of store.versions) {
    const cmk = cmks.get(v.key_id);
    if (cmk && cmk.protection_level === 'HSM' && v.material_state !== 'Absent') claimedCmk.set(v.version_id, { version: v, cmk });
  }
  const busy = new Map<string, Explained['reason']>();
  for (const i of store.intents) busy.set(`${i.kind}:${i.object_id}`, 'open-intent');
  for (const d of store.pendingDestroys) busy.set(`${d.kind}:${d.object_id}`, 'pending-destroy');

  const seen = new Map<string, AuditedObject>();
  const present = new Set<string>(); // role:id
  for (const obj of listing.objects) {
    if (obj.labelKind === undefined) {
      if (!opts.allowForeignObjects) findings.push({ kind: 'foreign-object', object: obj.label || '(no label)', detail: `a ${obj.class}${obj.keyType ? ` (${obj.keyType})` : ''} that is not kmsd's; kmsd's token should hold only kmsd's objects (--allow-foreign-objects if the token is shared on purpose)` });
      continue;
    }
    if (obj.role === null) {
      findings.push({ kind: 'unknown-kind', object: obj.label, detail: `labelled kmsd:${obj.labelKind}: but a ${obj.class}, which kmsd never makes under that label` });
      continue;
    }
    const id = obj.labelId ?? '';
    const key = `${obj.role}:${id}`;
    if (seen.has(key) && obj.role !== 'instance') findings.push({ kind: 'duplicate', object: obj.label, detail: `more than one ${obj.class} is labelled ${obj.label}` });
    seen.set(key, obj);
    present.add(key);
    if (obj.role !== 'instance' && obj.id !== id) findings.push({ kind: 'label-id-mismatch', object: obj.label, detail: `CKA_ID is ${JSON.stringify(obj.id)}, the label names ${JSON.stringify(id)}` });

    // Requirements that depend on the store: generated CMK material never left the token; a
    // wrapping key may raw-decrypt only where its row says the host-assisted path was allowed.
    const extra: Record<string, boolean | number | string> = {};
    const claim = obj.role === 'cmk' ? claimedCmk.get(id) : undefined;
    if (claim && claim.cmk.origin !== 'EXTERNAL') Object.assign(extra, { alwaysSensitive: true, neverExtractable: true });
    // Imported material that entered through C_CreateObject (host-assisted unwrap) carries no
    // CKA_VALUE_LEN on tokens that record it only for generated or unwrapped keys: opencryptoki 3.8
    // leaves it out, SoftHSM 2.6 reports 0; the spec forbids stating it in that template. kmsd
    // checked its length before it was created; any other length the token reports must be 32.
    const noLength = obj.attributes.valueLen === 'unavailable' || obj.attributes.valueLen === 0;
    if (claim && claim.cmk.origin === 'EXTERNAL' && noLength) extra.valueLen = obj.attributes.valueLen as number | string;
    const wrapRow = obj.role === 'wrap-private' ? wraps.get(id) : undefined;
    if (wrapRow) extra.decrypt = wrapRow.raw_decrypt === 1;
    else if (obj.role === 'wrap-private') extra.decrypt = false;
    const mismatches = checkAttributes(obj, rules, extra);
    if (mismatches.length) {
      findings.push({
        kind: 'attributes',
        object: obj.label,
        detail: mismatches.map((m) => `${m.attribute} is ${String(m.actual)}, its role (${obj.role}) requires ${String(m.expected)}`).join('; '),
        mismatches,
      });
    }

    // Is it explained by the store?
    if (obj.role === 'cmk' || obj.role === 'wrap-private' || obj.role === 'wrap-public') {
      const kind = obj.role === 'cmk' ? 'cmk' : 'wrap';
      const claimed = kind === 'cmk' ? claimedCmk.has(id) : wraps.has(id);
      if (!claimed) {
        const reason = busy.get(`${kind}:${id}`);
        if (reason) {
          if (!explained.some((e) => e.object === `kmsd:${kind}:${id}`)) explained.push({ object: `kmsd:${kind}:${id}`, reason, present: true });
        } else {
          findings.push({ kind: 'orphan', object: obj.label, detail: kind === 'cmk' ? 'no key version in the store claims this CMK material, and no creation or destroy of it is in flight' : 'no wrapping key row in the store names this key, and no creation or destroy of it is in flight' });
        }
      }
    }
    const singleton: Partial<Record<string, string>> = { root: ROOT_KEY_ID, mac: MAC_KEY_ID, 'sign-private': AUDIT_SIGNING_KEY_ID, 'sign-public': AUDIT_SIGNING_KEY_ID };
    const expectedId = singleton[obj.role];
    if (expectedId !== undefined && id !== expectedId) findings.push({ kind: 'orphan', object: obj.label, detail: `kmsd keeps one ${obj.role} key, ${expectedId}; this one is not it` });
  }

  // What the store claims and the token does not hold.
  for (const [vid, { cmk, version }] of claimedCmk) {
    if (!present.has(`cmk:${vid}`)) findings.push({ kind: 'missing', object: `kmsd:cmk:${vid}`, detail: `key version ${vid} of CMK ${cmk.key_id} (material ${version.material_state}) has no material in the token` });
  }
  for (const w of store.wrappingKeys) {
    for (const half of ['private', 'public'] as const) {
      if (!present.has(`wrap-${half}:${w.wrap_id}`)) findings.push({ kind: 'missing', object: `kmsd:wrap:${w.wrap_id}`, detail: `the ${half} half of wrapping key ${w.wrap_id}${w.key_id ? ` (import for CMK ${w.key_id})` : ' (pooled)'} is not in the token` });
    }
  }
  for (const [key, reason] of busy) {
    const [kind, id] = key.split(':') as ['cmk' | 'wrap', string];
    const there = kind === 'cmk' ? present.has(`cmk:${id}`) : present.has(`wrap-private:${id}`) || present.has(`wrap-public:${id}`);
    if (!there) explained.push({ object: `kmsd:${kind}:${id}`, reason, present: false });
  }
  if (store.instanceId !== undefined) {
    // A bound store: kmsd made these on its first start, right after binding.
    for (const [role, id] of [['root', ROOT_KEY_ID], ['mac', MAC_KEY_ID], ['sign-private', AUDIT_SIGNING_KEY_ID], ['sign-public', AUDIT_SIGNING_KEY_ID]] as const) {
      if (!present.has(`${role}:${id}`)) findings.push({ kind: 'missing', object: `kmsd:${role.replace(/-.*/, '')}:${id}`, detail: `the token has no ${role} key, which kmsd creates at its first start` });
    }
  }

  // The store/token binding.
  const instances = listing.objects.filter((o) => o.role === 'instance');
  if (instances.length > 1) findings.push({ kind: 'instance', object: 'kmsd:instance', detail: `the token holds ${instances.length} kmsd:instance objects; kmsd refuses to start until one is removed` });
  if (instances.length === 0 && store.instanceId !== undefined) findings.push({ kind: 'instance', object: 'kmsd:instance', detail: `the store is bound to instance ${store.instanceId}, but the token has no kmsd:instance object` });
  if (instances.length === 1) {
    const inst = instances[0];
    const tokenInstance = inst.attributes.value;
    const seq = /^(\d{1,15})$/.exec(inst.labelId ?? '');
    if (!seq) findings.push({ kind: 'instance', object: inst.label, detail: 'the label is not kmsd:instance:<sequence>' });
    if (store.instanceId === undefined) findings.push({ kind: 'instance', object: inst.label, detail: `the token belongs to instance ${String(tokenInstance)}, but the store was never bound` });
    else if (tokenInstance !== store.instanceId) findings.push({ kind: 'instance', object: inst.label, detail: `the token belongs to instance ${String(tokenInstance)}, the store is instance ${store.instanceId}` });
    else if (seq && Number(seq[1]) > store.tokenSequence) {
      findings.push({ kind: 'instance', object: inst.label, detail: `the token's creation sequence ${seq[1]} is ahead of the store's ${store.tokenSequence}: the store is older than the token (a restored backup?)` });
    }
  }

  const byRole: Record<string, number> = {};
  for (const o of listing.objects) byRole[o.role ?? (o.labelKind !== undefined ? 'unknown-kind' : 'foreign')] = (byRole[o.role ?? (o.labelKind !== undefined ? 'unknown-kind' : 'foreign')] ?? 0) + 1;
  return {
    clean: findings.length === 0,
    token: listing.token,
    dataDir: opts.dataDir,
    summary: { objects: listing.objects.length, findings: findings.length, explained: explained.length, byRole },
    findings,
    explained,
    objects: listing.objects,
  };
}

/** Reads the store's view of the token, read-only: the data directory's SQLite file, or the PostgreSQL store. */
export async function readStoreView(cfg: Pick<AuditConfig, 'dataDir' | 'store'>): Promise<StoreView> {
  if (cfg.store) return readPostgresView(cfg.store);
  const store = new SqliteDb(cfg.dataDir, { readOnly: true });
  try {
    return {
      instanceId: store.instanceId(),
      tokenSequence: store.tokenSequence(),
      cmks: store.allCmks(),
      versions: store.allVersions(),
      wrappingKeys: store.allWrappingKeys(),
      intents: store.allIntents(),
      pendingDestroys: store.pendingDestroys(),
    };
  } finally {
    store.close();
  }
}

async function readPostgresView(c: PostgresStoreConfig): Promise<StoreView> {
  const store = await PgStore.openReadOnly({ host: c.host, port: c.port, user: c.user, database: c.database, password: c.password(), applicationName: 'kmsd-audit-token' });
  try {
    return {
      instanceId: await store.instanceId(),
      tokenSequence: await store.tokenSequence(),
      cmks: await store.allCmks(),
      versions: await store.allVersions(),
      wrappingKeys: await store.allWrappingKeys(),
      intents: await store.allIntents(),
      pendingDestroys: await store.pendingDestroys(),
    };
  } finally {
    await store.close();
  }
}

function tokenOf(cfg: AuditConfig): { modulePath: string; tokenLabel: string; pin: string } {
  if (cfg.pkcs11Module) {
    const read = readPinFile(cfg.pinFile as string, cfg.allowInsecurePinFile);
    return { modulePath: cfg.pkcs11Module, tokenLabel: cfg.tokenLabel as string, pin: read.pin };
  }
  const dev = devTokenPaths(cfg.dataDir);
  if (!fs.existsSync(dev.conf) || !fs.existsSync(dev.pinFile)) {
    throw new ConfigError(`${cfg.dataDir} has no development token (no ${dev.conf} or ${dev.pinFile}): give --pkcs11-module, --token-label and --pin-file`);
  }
  // SoftHSM finds the data directory's token directory through its configuration file.
  useSoftHsmConf(dev.conf);
  return { modulePath: findSoftHsmModule(), tokenLabel: DEV_TOKEN_LABEL, pin: readPinFile(dev.pinFile, true).pin };
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(AUDIT_USAGE + '\n');
    return 0;
  }
  let cfg: AuditConfig;
  let token: { modulePath: string; tokenLabel: string; pin: string };
  try {
    cfg = loadAuditConfig(argv);
    token = tokenOf(cfg);
  } catch (e) {
    process.stderr.write(`audit-token: ${(e as Error).message}\n`);
    return 2;
  }
  let view: StoreView;
  let listing: TokenListing;
  // The token first: kmsd commits an intent or a row before it creates an object, so a store read
  // after the listing explains every object that was there, even with kmsd running.
  try {
    listing = listToken(token);
  } catch (e) {
    process.stderr.write(`audit-token: ${e instanceof TokenAuditError ? e.message : `cannot list the token: ${(e as Error).message}`}\n`);
    return 3;
  }
  try {
    view = await readStoreView(cfg);
  } catch (e) {
    process.stderr.write(`audit-token: cannot read the metadata store: ${(e as Error).message}\n`);
    return 3;
  }
  const report = auditListing(listing, view, { allowForeignObjects: cfg.allowForeignObjects, dataDir: cfg.dataDir });
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  if (!report.clean) process.stderr.write(`audit-token: ${report.findings.length} finding(s): ${[...new Set(report.findings.map((f) => f.kind))].join(', ')}\n`);
  return report.clean ? 0 : 1;
}

if (require.main === module) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
