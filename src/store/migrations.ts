// Append-only list of schema migrations; each runs once, in its own transaction.

export interface Migration {
  version: number;
  sql: string;
}

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE cmks (
        key_id TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        key_spec TEXT NOT NULL,
        key_usage TEXT NOT NULL,
        protection_level TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        key_state TEXT NOT NULL,
        creation_date INTEGER NOT NULL,
        delete_date INTEGER,
        material_expire_time INTEGER,
        automatic_rotation TEXT NOT NULL DEFAULT 'Disabled',
        rotation_interval_s INTEGER,
        next_rotation_date INTEGER,
        last_rotation_date INTEGER,
        primary_key_version TEXT,
        material_fingerprint BLOB,
        state_before_deletion TEXT,
        import_path TEXT
      );
      CREATE TABLE key_versions (
        version_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        creation_date INTEGER NOT NULL,
        software_wrapped BLOB,
        material_state TEXT NOT NULL DEFAULT 'Present'
      );
      CREATE INDEX key_versions_by_key ON key_versions(key_id);
      CREATE TABLE aliases (
        alias_name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        creation_date INTEGER NOT NULL,
        update_date INTEGER NOT NULL
      );
      CREATE INDEX aliases_by_key ON aliases(key_id);
      CREATE TABLE wrapping_keys (
        wrap_id TEXT PRIMARY KEY,
        key_spec TEXT NOT NULL,
        raw_decrypt INTEGER NOT NULL,
        public_key BLOB NOT NULL,
        created INTEGER NOT NULL,
        key_id TEXT,
        algorithm TEXT,
        expires INTEGER
      );
    `,
  },
  // ---- key ceremonies (custodians, proposals, approvals) and the hash-chained audit log.
  {
    version: 2,
    sql: `
      CREATE TABLE ceremony_custodians (
        custodian_id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL,           -- DER SubjectPublicKeyInfo of the custodian's Ed25519 key
        fingerprint TEXT NOT NULL,          -- SHA-256 hex of public_key
        added_at INTEGER NOT NULL,
        removed_at INTEGER                  -- set when removed from the set; the row stays for the record
      );
      CREATE TABLE ceremony_proposals (
        proposal_id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        action TEXT NOT NULL,
        key_id TEXT,
        parameters TEXT NOT NULL,           -- JSON; secret-ish values are replaced by their SHA-256 once closed
        document BLOB NOT NULL,             -- the exact bytes custodians sign (current revision)
        requester TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        state TEXT NOT NULL,                -- Open | Executing | Executed | Cancelled
        closed_at INTEGER,
        outcome TEXT,
        result TEXT
      );
      CREATE INDEX ceremony_proposals_by_state ON ceremony_proposals(state, created_at);
      CREATE TABLE ceremony_proposal_revisions (
        proposal_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        document BLOB NOT NULL,
        PRIMARY KEY (proposal_id, revision)
      );
      CREATE TABLE ceremony_approvals (
        proposal_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        custodian_id TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,      -- the key that signed: a replaced key's approvals stop counting
        signature BLOB NOT NULL,
        approved_at INTEGER NOT NULL,
        PRIMARY KEY (proposal_id, revision, custodian_id)
      );
      CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        key_id TEXT NOT NULL,
        proposal_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
      );
      CREATE INDEX audit_log_by_key ON audit_log(key_id, seq);
      -- Append-only by construction; someone with the file can drop these, which the hash chain and
      -- the token-signed checkpoints then reveal.
      CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
      CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
      CREATE TABLE usage_counters (
        key_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        ok INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        PRIMARY KEY (key_id, principal, action)
      );
    `,
  },
  // ---- failed imports per wrapping key: past a small number the key is destroyed, so the import
  // path can never serve as a padding oracle (src/kms/import.ts).
  {
    version: 3,
    sql: `ALTER TABLE wrapping_keys ADD COLUMN failed_imports INTEGER NOT NULL DEFAULT 0;`,
  },
  // ---- the store/token binding: write-ahead intents for token objects being created (start-up
  // reconciliation destroys only what an open intent names), destroys the token refused and that are
  // retried until the object is gone, and the state an external CMK returns to when its material is
  // imported again (a Disabled CMK stays Disabled across DeleteKeyMaterial and re-import).
  {
    version: 4,
    sql: `
      CREATE TABLE token_intents (
        seq INTEGER PRIMARY KEY,            -- creation sequence, also raised in the token's kmsd:instance object
        kind TEXT NOT NULL,                 -- cmk | wrap
        object_id TEXT NOT NULL,
        created INTEGER NOT NULL
      );
      CREATE INDEX token_intents_by_object ON token_intents(kind, object_id);
      CREATE TABLE token_destroys (
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        key_id TEXT,                        -- the CMK whose material it was (cmk), for the audit record
        reason TEXT NOT NULL,               -- deleted | expired | key-deleted | wrapping-key-expired | ...
        since INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (kind, object_id)
      );
      ALTER TABLE cmks ADD COLUMN state_after_import TEXT;
    `,
  },
  // ---- access keys for the HTTP dialects: the secret is stored only as an RFC 5649 wrap under the
  // token-resident root key, as SOFTWARE key material is (src/kms/access-keys.ts).
  {
    version: 5,
    sql: `
      CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        status TEXT NOT NULL,
        sealed_secret BLOB NOT NULL,
        creation_date INTEGER NOT NULL,
        update_date INTEGER NOT NULL
      );
    `,
  },
  // ---- AWS KMS external key store (XKS proxy): key stores by URI path prefix, their SigV4
  // credentials (the secret sealed under the root key, as access keys are), and the external keys
  // that expose one CMK each (src/kms/xks.ts).
  {
    version: 6,
    sql: `
      CREATE TABLE xks_key_stores (
        uri_path_prefix TEXT PRIMARY KEY,
        creation_date INTEGER NOT NULL
      );
      CREATE TABLE xks_credentials (
        access_key_id TEXT PRIMARY KEY,
        uri_path_prefix TEXT NOT NULL REFERENCES xks_key_stores(uri_path_prefix),
        sealed_secret BLOB NOT NULL,
        creation_date INTEGER NOT NULL
      );
      CREATE INDEX xks_credentials_by_store ON xks_credentials(uri_path_prefix);
      CREATE TABLE xks_keys (
        uri_path_prefix TEXT NOT NULL REFERENCES xks_key_stores(uri_path_prefix),
        external_key_id TEXT NOT NULL,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        operations TEXT NOT NULL,            -- ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE
        creation_date INTEGER NOT NULL,
        PRIMARY KEY (uri_path_prefix, external_key_id)
      );
      CREATE INDEX xks_keys_by_cmk ON xks_keys(key_id);
    `,
  },
  {
    // The scheduler asks every second which CMKs are due for deletion, rotation or expiry. Without
    // these the three questions were full scans of cmks on the event loop: 2-30 ms a second at
    // 10,000 keys under load, ten times that at 100,000, and in the p99 of every call. Partial
    // indexes, each WHERE the very condition of its query (store.ts cmksDue), hold only the rows
    // that can ever be due.
    version: 7,
    sql: `
      CREATE INDEX cmks_deletion_due ON cmks(delete_date) WHERE key_state = 'PendingDeletion';
      CREATE INDEX cmks_rotation_due ON cmks(next_rotation_date) WHERE automatic_rotation = 'Enabled' AND key_state = 'Enabled' AND next_rotation_date IS NOT NULL;
      CREATE INDEX cmks_expiry_due ON cmks(material_expire_time) WHERE material_expire_time IS NOT NULL AND key_state <> 'PendingImport';
    `,
  },
  {
    // The process that opened each intent (mirrors the PostgreSQL store, where several replicas
    // share the table); one kmsd has only its own.
    version: 8,
    sql: `
      ALTER TABLE token_intents ADD COLUMN owner TEXT;
      CREATE TABLE key_leases (              -- used by the PostgreSQL store; one kmsd locks in memory
        key_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        since INTEGER NOT NULL
      );
    `,
  },
];
