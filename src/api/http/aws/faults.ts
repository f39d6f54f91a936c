// The answers AWS KMS gives that no kmsd error code and no transport refusal stands for: a request
// without any signature, and the AWS features kmsd does not have. Domain errors go through the one
// table (HTTP_ERROR_TABLE), transport refusals through HTTP_REFUSAL_TABLE (src/api/http/error-table.ts).

export const AWS_ONLY_FAULTS = {
  /** No Authorization header at all. */
  MissingAuthenticationTokenException: 400,
  /** An AWS feature kmsd does not have (grants, key policies, multi-Region keys, custom key stores, DryRun...). */
  UnsupportedOperationException: 400,
  /** Tags other than kmsd:ProtectionLevel (kmsd stores no tags). */
  TagException: 400,
  /** A Marker that this kmsd did not hand out. */
  InvalidMarkerException: 400,
} as const;

export type AwsOnlyFault = keyof typeof AWS_ONLY_FAULTS;

export class AwsFault extends Error {
  readonly status: number;
  constructor(
    readonly type: AwsOnlyFault,
    message: string,
  ) {
    super(message);
    this.name = 'AwsFault';
    this.status = AWS_ONLY_FAULTS[type];
  }
}

export function unsupported(field: string, what: string): AwsFault {
  return new AwsFault('UnsupportedOperationException', `${field}: ${what}`);
}
