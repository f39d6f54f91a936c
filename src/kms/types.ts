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

/** Who is calling and under which request id, for logs and (later) audit. */
export interface CallContext {
  requestId: string;
  principal: string;
  /** True when principal is a verified client certificate identity; otherwise it is the gRPC peer address or anonymous. */
  authenticated?: boolean;
  /** The access key an HTTP request was signed with (audited beside the principal). */
  accessKeyId?: string;
}
