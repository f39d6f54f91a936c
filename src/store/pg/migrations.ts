// The schema of src/store/migrations.ts in PostgreSQL: the same versions, tables, columns and
// constraints (BIGINT for times and sequences, BYTEA for blobs), so `kmsd migrate` copies rows
// column for column and a version number means the same schema on both backends. Append-only.
//
// What PostgreSQL adds, per table: a row trigger that NOTIFYs `kmsd_rows` with the table and the
// row's key (delivered when the writing transaction commits), by which every replica drops what it
// caches of that row (src/store/pg/pg-store.ts). The audit log and usage counters send none: they are
// never cached, and the chain head is read under a lock.

export interface PgMigration {
  version: number;
  sql: string;
}

/** The NOTIFY trigger for one table whose rows are keyed by `keyColumn` (an identifier of ours, never input). */
function notifyOn(table: string, keyColumn: string): string {
  return `CREATE TRIGGER ${table}_notify AFTER INSERT OR UPDATE OR DELETE ON ${table}
    FOR EACH ROW EXECUTE FUNCTION kmsd_notify_row('${keyColumn}');`;
}

export const PG_MIGRATIONS: PgMigration[] = [
  {
    version: 1,
    sql: `
      CREATE FUNCTION kmsd_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        k text;
      BEGIN
        IF TG_OP = 'DELETE' THEN k := to_jsonb(OLD) ->> TG_ARGV[0]; ELSE k := to_jsonb(NEW) ->> TG_ARGV[0]; END IF;
        -- NOTIFY payloads are limited to 8000 bytes; a longer key (none of ours is) invalidates the whole table.
        IF octet_length(k) > 7000 THEN k := '*'; END IF;
        PERFORM pg_notify('kmsd_rows', TG_TABLE_NAME || ':' || coalesce(k, '*'));
        RETURN NULL;
      END $$;
      CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE cmks (
        key_id TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        key_spec TEXT NOT NULL,
        key_usage TEXT NOT NULL,
        protection_level TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        key_state TEXT NOT NULL,
        creation_date BIGINT NOT NULL,
        delete_date BIGINT,
        material_expire_time BIGINT,
        automatic_rotation TEXT NOT NULL DEFAULT 'Disabled',
        rotation_interval_s BIGINT,
        next_rotation_date BIGINT,
        last_rotation_date BIGINT,
        primary_key_version TEXT,
        material_fingerprint BYTEA,
        state_before_deletion TEXT,
        import_path TEXT
      );
      CREATE TABLE key_versions (
        version_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        creation_date BIGINT NOT NULL,
        software_wrapped BYTEA,
        material_state TEXT NOT NULL DEFAULT 'Present'
      );
      CREATE INDEX key_versions_by_key ON key_versions(key_id);
      CREATE TABLE aliases (
        alias_name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        creation_date BIGINT NOT NULL,
        update_date BIGINT NOT NULL
      );
      CREATE INDEX aliases_by_key ON aliases(key_id);
      CREATE TABLE wrapping_keys (
        wrap_id TEXT PRIMARY KEY,
        key_spec TEXT NOT NULL,
        raw_decrypt INTEGER NOT NULL,
        public_key BYTEA NOT NULL,
        created BIGINT NOT NULL,
        key_id TEXT,
        algorithm TEXT,
        expires BIGINT
      );
      ${notifyOn('settings', 'name')}
      ${notifyOn('cmks', 'key_id')}
      ${notifyOn('key_versions', 'version_id')}
      ${notifyOn('aliases', 'alias_name')}
      ${notifyOn('wrapping_keys', 'wrap_id')}
    `,
  },
  {
    version: 2,
    sql: `
      CREATE TABLE ceremony_custodians (
        custodian_id TEXT PRIMARY KEY,
        public_key BYTEA NOT NULL,          -- DER SubjectPublicKeyInfo of the custodian's Ed25519 key
        fingerprint TEXT NOT NULL,          -- SHA-256 hex of public_key
        added_at BIGINT NOT NULL,
        removed_at BIGINT                   -- set when removed from the set; the row stays for the record
      );
      CREATE TABLE ceremony_proposals (
        proposal_id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        action TEXT NOT NULL,
        key_id TEXT,
        parameters TEXT NOT NULL,           -- JSON; secret-ish values are replaced by their SHA-256 once closed
        document BYTEA NOT NULL,            -- the exact bytes custodians sign (current revision)
        requester TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        state TEXT NOT NULL,                -- Open | Executing | Executed | Cancelled
        closed_at BIGINT,
        outcome TEXT,
        result TEXT
      );
      CREATE INDEX ceremony_proposals_by_state ON ceremony_proposals(state, created_at);
      CREATE TABLE ceremony_proposal_revisions (
        proposal_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        document BYTEA NOT NULL,
        PRIMARY KEY (proposal_id, revision)
      );
      CREATE TABLE ceremony_approvals (
        proposal_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        custodian_id TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,      -- the key that signed: a replaced key's approvals stop counting
        signature BYTEA NOT NULL,
        approved_at BIGINT NOT NULL,
        PRIMARY KEY (proposal_id, revision, custodian_id)
      );
      CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY,
        time BIGINT NOT NULL,
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
      -- Append-only by construction; someone with the database's owner role can drop these, which the
      -- hash chain and the token-signed checkpoints then reveal.
      CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit_log is append-only';
      END $$;
      CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
      CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
      CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
      CREATE TABLE usage_counters (
        key_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        ok BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        first_at BIGINT NOT NULL,
        last_at BIGINT NOT NULL,
        PRIMARY KEY (key_id, principal, action)
      );
      ${notifyOn('ceremony_custodians', 'custodian_id')}
      ${notifyOn('ceremony_proposals', 'proposal_id')}
      ${notifyOn('ceremony_approvals', 'proposal_id')}
    `,
  },
  {
    version: 3,
    sql: `ALTER TABLE wrapping_keys ADD COLUMN failed_imports INTEGER NOT NULL DEFAULT 0;`,
  },
  {
    version: 4,
    sql: `
      CREATE TABLE token_intents (
        seq BIGINT PRIMARY KEY,             -- creation sequence, also raised in the token's kmsd:instance object
        kind TEXT NOT NULL,                 -- cmk | wrap
        object_id TEXT NOT NULL,
        created BIGINT NOT NULL
      );
      CREATE INDEX token_intents_by_object ON token_intents(kind, object_id);
      CREATE TABLE token_destroys (
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        key_id TEXT,                        -- the CMK whose material it was (cmk), for the audit record
        reason TEXT NOT NULL,               -- deleted | expired | key-deleted | wrapping-key-expired | ...
        since BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (kind, object_id)
      );
      ALTER TABLE cmks ADD COLUMN state_after_import TEXT;
    `,
  },
  {
    version: 5,
    sql: `
      CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        status TEXT NOT NULL,
        sealed_secret BYTEA NOT NULL,
        creation_date BIGINT NOT NULL,
        update_date BIGINT NOT NULL
      );
      ${notifyOn('access_keys', 'access_key_id')}
    `,
  },
  {
    version: 6,
    sql: `
      CREATE TABLE xks_key_stores (
        uri_path_prefix TEXT PRIMARY KEY,
        creation_date BIGINT NOT NULL
      );
      CREATE TABLE xks_credentials (
        access_key_id TEXT PRIMARY KEY,
        uri_path_prefix TEXT NOT NULL REFERENCES xks_key_stores(uri_path_prefix),
        sealed_secret BYTEA NOT NULL,
        creation_date BIGINT NOT NULL
      );
      CREATE INDEX xks_credentials_by_store ON xks_credentials(uri_path_prefix);
      CREATE TABLE xks_keys (
        uri_path_prefix TEXT NOT NULL REFERENCES xks_key_stores(uri_path_prefix),
        external_key_id TEXT NOT NULL,
        key_id TEXT NOT NULL,                -- the CMK; no foreign key: its deletion leaves the mapping answering KeyNotFound
        operations TEXT NOT NULL,            -- ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE
        creation_date BIGINT NOT NULL,
        PRIMARY KEY (uri_path_prefix, external_key_id)
      );
      CREATE INDEX xks_keys_by_cmk ON xks_keys(key_id);
      ${notifyOn('xks_key_stores', 'uri_path_prefix')}
      ${notifyOn('xks_credentials', 'access_key_id')}
      ${notifyOn('xks_keys', 'external_key_id')}
    `,
  },
  {
    // The scheduler asks these three questions every second; without the partial indexes each is a
    // full scan of cmks, which at 10^5 keys costs every replica's calls their latency.
    version: 7,
    sql: `
      CREATE INDEX cmks_deletion_due ON cmks(delete_date) WHERE key_state = 'PendingDeletion';
      CREATE INDEX cmks_rotation_due ON cmks(next_rotation_date) WHERE automatic_rotation = 'Enabled' AND key_state = 'Enabled' AND next_rotation_date IS NOT NULL;
      CREATE INDEX cmks_expiry_due ON cmks(material_expire_time) WHERE material_expire_time IS NOT NULL AND key_state <> 'PendingImport';
    `,
  },
  {
    // The replica that opened each intent: another replica's start-up leaves it alone while that
    // replica is alive (its presence lock held). Key leases: one replica at a time changes a CMK's
    // token objects (import, material deletion, key deletion), since two imports into one key
    // version would both write under its label.
    version: 8,
    sql: `
      ALTER TABLE token_intents ADD COLUMN owner TEXT;
      CREATE TABLE key_leases (
        key_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        since BIGINT NOT NULL
      );
    `,
  },
];
