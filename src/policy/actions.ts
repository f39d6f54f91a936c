// The catalogue of actions the authorization policy knows: every RPC of KeyManagementService,
// CeremonyService and AuditService, with its class (which role may call it) and whether it is about
// particular CMKs (then a grant names the keys) or about the service as a whole (then a grant must
// say keys ["*"]). An RPC missing from this table is denied to everyone while a policy is in force
// (a grant cannot name it: validation refuses unknown actions), and the server logs that at start-up
// (src/api/grpc/auth.ts), so a new RPC is never open by accident.

export type ActionClass =
  /** Using a CMK: Encrypt, Decrypt, data keys. Never implied by a role: only grants give it. */
  | 'crypto'
  /** Changing CMKs, aliases, versions and key material: the admin role. */
  | 'lifecycle'
  /** Reading metadata: the admin role (and grants). */
  | 'read'
  /** Running ceremonies (init, propose, execute): the admin role. */
  | 'ceremony'
  /** Approving proposals: the custodian role only (an admin proposes, custodians approve). */
  | 'approve'
  /** Reading the ceremony and its proposals: both roles. */
  | 'ceremony-read'
  /** Reading and verifying the audit trail: the admin role. */
  | 'audit';

export interface ActionInfo {
  cls: ActionClass;
  /** True when the request names CMKs (KeyId, AliasName, a CiphertextBlob) that grants restrict. */
  keyed: boolean;
  /** True when the request carries an EncryptionContext that grant conditions can test. */
  context: boolean;
}

const k = (cls: ActionClass, context = false): ActionInfo => ({ cls, keyed: true, context });
const g = (cls: ActionClass): ActionInfo => ({ cls, keyed: false, context: false });

export const ACTIONS: Record<string, ActionInfo> = {
  // KeyManagementService: lifecycle
  CreateKey: g('lifecycle'),
  UpdateKeyDescription: k('lifecycle'),
  EnableKey: k('lifecycle'),
  DisableKey: k('lifecycle'),
  ScheduleKeyDeletion: k('lifecycle'),
  CancelKeyDeletion: k('lifecycle'),
  UpdateRotationPolicy: k('lifecycle'),
  CreateAlias: k('lifecycle'),
  UpdateAlias: k('lifecycle'),
  DeleteAlias: k('lifecycle'),
  CreateKeyVersion: k('lifecycle'),
  GetParametersForImport: k('lifecycle'),
  ImportKeyMaterial: k('lifecycle'),
  DeleteKeyMaterial: k('lifecycle'),
  // Destroys token objects the store does not explain: an admin action, under the quorum when one is set.
  RemoveUnknownTokenObjects: g('lifecycle'),
  // KeyManagementService: metadata
  DescribeKey: k('read'),
  ListKeys: g('read'),
  ListAliases: g('read'),
  ListAliasesByKeyId: k('read'),
  ListKeyVersions: k('read'),
  DescribeKeyVersion: k('read'),
  DescribeHsm: g('read'),
  // KeyManagementService: cryptography
  Encrypt: k('crypto', true),
  Decrypt: k('crypto', true),
  GenerateDataKey: k('crypto', true),
  GenerateDataKeyWithoutPlaintext: k('crypto', true),
  ReEncrypt: k('crypto', true),
  // Random bytes name no CMK: a grant must say keys ["*"]; like every crypto action, no role implies it.
  GenerateRandom: g('crypto'),
  // Batches and their streams: every item's CMK (and context) is checked, one refusal refuses the message.
  EncryptBatch: k('crypto', true),
  DecryptBatch: k('crypto', true),
  EncryptStream: k('crypto', true),
  DecryptStream: k('crypto', true),
  DescribeRuntime: g('read'),
  // Access keys of the HTTP dialects: credentials are the admin's to manage.
  CreateAccessKey: g('lifecycle'),
  ListAccessKeys: g('read'),
  UpdateAccessKey: g('lifecycle'),
  DeleteAccessKey: g('lifecycle'),
  // The AWS external key store proxy: key stores, credentials and external keys are the admin's;
  // the XKS operations are called by a key store's principal "xks:PREFIX" and need grants like Encrypt.
  CreateXksKeyStore: g('lifecycle'),
  CreateXksCredential: g('lifecycle'),
  DeleteXksCredential: g('lifecycle'),
  ListXksKeyStores: g('read'),
  DeleteXksKeyStore: g('lifecycle'),
  CreateXksKey: k('lifecycle'),
  DeleteXksKey: g('lifecycle'),
  ListXksKeys: g('read'),
  XksGetKeyMetadata: k('read'),
  XksEncrypt: k('crypto'),
  XksDecrypt: k('crypto'),
  XksGetHealthStatus: g('read'),
  // CeremonyService
  InitCeremony: g('ceremony'),
  CreateProposal: g('ceremony'),
  ExecuteProposal: g('ceremony'),
  CancelProposal: g('ceremony'),
  RenewProposal: g('ceremony'),
  ApproveProposal: g('approve'),
  GetProposal: g('ceremony-read'),
  ListProposals: g('ceremony-read'),
  DescribeCeremony: g('ceremony-read'),
  // AuditService
  ListAuditEvents: g('audit'),
  VerifyAudit: g('audit'),
  ExportAudit: g('audit'),
  GetUsageCounters: g('audit'),
};

/**
 * What each role may call, on every key. Separation of duties: admins manage keys but cannot use
 * them (no 'crypto') and cannot approve their own proposals (no 'approve'); custodians approve and
 * read proposals and nothing else. Using a key always takes an explicit grant.
 */
export const ROLE_CLASSES: Record<'admin' | 'custodian', ActionClass[]> = {
  admin: ['lifecycle', 'read', 'ceremony', 'ceremony-read', 'audit'],
  custodian: ['approve', 'ceremony-read'],
};

export function actionInfo(name: string): ActionInfo | undefined {
  return Object.prototype.hasOwnProperty.call(ACTIONS, name) ? ACTIONS[name] : undefined;
}

export const KNOWN_ACTIONS = Object.keys(ACTIONS);
export const CONTEXT_ACTIONS = KNOWN_ACTIONS.filter((a) => ACTIONS[a].context);
