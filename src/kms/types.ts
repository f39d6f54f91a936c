// Requests and responses of the domain, in the API's own field names (Alibaba Cloud KMS). Binary
// values are base64 strings, as in the API, so the gRPC layer passes messages through unchanged.

export type Origin = 'Aliyun_KMS' | 'EXTERNAL';
export type KeyState = 'Enabled' | 'Disabled' | 'PendingImport' | 'PendingDeletion';
export type ProtectionLevel = 'SOFTWARE' | 'HSM';
export type Context = Record<string, string>;

export interface KeyMetadata {
  KeyId: string;
  Arn: string;
  KeyState: KeyState;
  Origin: Origin;
  KeySpec: string;
  KeyUsage: string;
  ProtectionLevel: ProtectionLevel;
  Description: string;
  CreationDate: string;
  DeleteDate: string;
  MaterialExpireTime: string;
  AutomaticRotation: string;
  RotationInterval: string;
  NextRotationDate: string;
  LastRotationDate: string;
  PrimaryKeyVersion: string;
  /** How the current key material was unwrapped (in-token, composed, host-assisted...); empty unless imported. */
  MaterialImportPath: string;
}

export interface KeyVersion {
  KeyId: string;
  KeyVersionId: string;
  CreationDate: string;
}

import type { StoreTx } from '../store/api';

/** What a call's audit record names beyond its request (a new CMK's id, a new proposal's). */
export interface RecordNames {
  KeyId?: string;
  ProposalId?: string;
  AccessKeyId?: string;
}

/** Who is calling and under which request id, for logs and audit. */
export interface CallContext {
  requestId: string;
  principal: string;
  /** True when principal is a verified client certificate identity; otherwise it is the gRPC peer address or anonymous. */
  authenticated?: boolean;
  /** The access key an HTTP request was signed with (audited beside the principal). */
  accessKeyId?: string;
  /**
   * Set by the audit recorder (src/api/grpc/ceremony.ts): appends this call's record in the
   * transaction that makes its change, so a crash keeps both or neither; once it has run (and that
   * transaction committed), the recorder writes no record of its own for the call's success.
   * Domain code that changes state calls it last inside that transaction (KmsService.change).
   */
  record?: (tx: StoreTx, names?: RecordNames) => Promise<void>;
}
