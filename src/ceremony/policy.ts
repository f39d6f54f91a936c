// The quorum policy: which actions need M-of-N custodian approval, globally and per CMK. It applies
// only once a ceremony is initialized; a daemon without custodians guards nothing. Changes to the
// custodian set, the threshold or this policy are always guarded (they exist only as proposals).
// The reverse of a guarded action (EnableKey of DisableKey, CancelKeyDeletion of
// ScheduleKeyDeletion) is guarded too unless the policy says otherwise.

import { invalid } from '../kms/errors';

/** Actions on one CMK that a policy can guard (each takes KeyId). */
export const GUARDABLE_ACTIONS = [
  'ImportKeyMaterial',
  'DeleteKeyMaterial',
  'ScheduleKeyDeletion',
  'CancelKeyDeletion',
  'DisableKey',
  'EnableKey',
  'UpdateKeyDescription',
  'CreateKeyVersion',
  // Exposing an HSM CMK to AWS KMS through the external key store proxy.
  'CreateXksKey',
] as const;
export type GuardableAction = (typeof GUARDABLE_ACTIONS)[number];

export interface QuorumPolicy {
  /** Guarded on every CMK whose protection level is listed. */
  GuardedActions: GuardableAction[];
  ProtectionLevels: ('HSM' | 'SOFTWARE')[];
  /** Per CMK: this list replaces the global rule for that CMK (an empty list guards nothing on it). */
  Keys: Record<string, GuardableAction[]>;
  /** Reverses that stay direct although the action they undo is guarded (absent: none). */
  UnguardedReverses?: ReverseAction[];
}

/**
 * Actions that undo another one. Where the action is guarded its reverse is guarded too, unless the
 * policy lists the reverse in UnguardedReverses: otherwise one caller could undo at once what M
 * custodians approved (a DisableKey proposal undone by a direct EnableKey).
 */
export const REVERSES = { EnableKey: 'DisableKey', CancelKeyDeletion: 'ScheduleKeyDeletion' } as const satisfies Partial<Record<GuardableAction, GuardableAction>>;
export type ReverseAction = keyof typeof REVERSES;

function isReverse(action: string): action is ReverseAction {
  return Object.prototype.hasOwnProperty.call(REVERSES, action);
}

export const DEFAULT_POLICY: QuorumPolicy = {
  GuardedActions: ['ImportKeyMaterial', 'DeleteKeyMaterial', 'ScheduleKeyDeletion', 'DisableKey'],
  ProtectionLevels: ['HSM'],
  Keys: {},
};

export function isGuardable(action: string): action is GuardableAction {
  return (GUARDABLE_ACTIONS as readonly string[]).includes(action);
}

/** The actions guarded on this CMK as the policy lists them (per CMK, or the global rule). */
function listedFor(policy: QuorumPolicy, cmk: { key_id: string; protection_level: string }): GuardableAction[] {
  const perKey = policy.Keys[cmk.key_id];
  if (perKey) return perKey;
  return (policy.ProtectionLevels as string[]).includes(cmk.protection_level) ? policy.GuardedActions : [];
}

/** Why an action is guarded on this CMK: listed, or the reverse of a listed action; null when it is not. */
export function guardReason(policy: QuorumPolicy, action: string, cmk: { key_id: string; protection_level: string }): 'listed' | 'reverse' | null {
  if (!isGuardable(action)) return null;
  const listed = listedFor(policy, cmk);
  if (listed.includes(action)) return 'listed';
  if (isReverse(action) && listed.includes(REVERSES[action]) && !(policy.UnguardedReverses ?? []).includes(action)) return 'reverse';
  return null;
}

export function isGuarded(policy: QuorumPolicy, action: string, cmk: { key_id: string; protection_level: string }): boolean {
  return guardReason(policy, action, cmk) !== null;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Parses and validates a policy from JSON (the SetQuorumPolicy proposal's Policy parameter). */
export function parsePolicy(field: string, json: string | undefined): QuorumPolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(json ?? '');
  } catch {
    throw invalid(field, 'must be a JSON object {"GuardedActions": [...], "ProtectionLevels": [...], "Keys": {"<KeyId>": [...]}}');
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw invalid(field, 'must be a JSON object');
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['GuardedActions', 'ProtectionLevels', 'Keys', 'UnguardedReverses'].includes(k)) throw invalid(field, `unknown member "${k}"`);
  const actions = (name: string, v: unknown): GuardableAction[] => {
    if (!Array.isArray(v)) throw invalid(field, `${name} must be an array of action names`);
    for (const a of v) if (typeof a !== 'string' || !isGuardable(a)) throw invalid(field, `${name}: "${String(a)}" is not a guardable action (${GUARDABLE_ACTIONS.join(', ')})`);
    return [...new Set(v as GuardableAction[])].sort();
  };
  const levels = o.ProtectionLevels ?? ['HSM'];
  if (!Array.isArray(levels) || levels.some((l) => l !== 'HSM' && l !== 'SOFTWARE')) throw invalid(field, 'ProtectionLevels must be an array of HSM and/or SOFTWARE');
  const keys: Record<string, GuardableAction[]> = {};
  if (o.Keys !== undefined) {
    if (!o.Keys || typeof o.Keys !== 'object' || Array.isArray(o.Keys)) throw invalid(field, 'Keys must be an object of KeyId to action list');
    for (const [id, list] of Object.entries(o.Keys as Record<string, unknown>)) {
      if (!UUID_RE.test(id)) throw invalid(field, `Keys: "${id}" is not a key id`);
      keys[id] = actions(`Keys.${id}`, list);
    }
  }
  let unguarded: ReverseAction[] = [];
  if (o.UnguardedReverses !== undefined) {
    const list = o.UnguardedReverses;
    if (!Array.isArray(list) || list.some((a) => typeof a !== 'string' || !isReverse(a))) {
      throw invalid(field, `UnguardedReverses must be an array of ${Object.keys(REVERSES).join(', ')} (reverses that stay direct when the action they undo is guarded)`);
    }
    unguarded = [...new Set(list as ReverseAction[])].sort();
  }
  const policy: QuorumPolicy = { GuardedActions: actions('GuardedActions', o.GuardedActions ?? []), ProtectionLevels: [...new Set(levels as ('HSM' | 'SOFTWARE')[])].sort(), Keys: keys };
  // Only when given, so that a policy without the opt-out reads as before.
  if (unguarded.length) policy.UnguardedReverses = unguarded;
  return policy;
}
