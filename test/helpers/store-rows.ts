// Rows for store tests that insert CMKs directly (no daemon): every column stated once, so a new
// column is added here and not in each suite.

import type { CmkRow } from '../../src/store/api';

export function cmkRow(keyId: string, over: Partial<CmkRow> = {}): CmkRow {
  return {
    key_id: keyId,
    origin: 'Aliyun_KMS',
    key_spec: 'Aliyun_AES_256',
    key_usage: 'ENCRYPT/DECRYPT',
    protection_level: 'HSM',
    description: 'd',
    key_state: 'Enabled',
    creation_date: 1_700_000_000_123,
    delete_date: null,
    material_expire_time: null,
    automatic_rotation: 'Disabled',
    rotation_interval_s: null,
    next_rotation_date: null,
    last_rotation_date: null,
    primary_key_version: null,
    material_fingerprint: null,
    state_before_deletion: null,
    import_path: null,
    state_after_import: null,
    ...over,
  };
}
