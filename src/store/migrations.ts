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
        key_id TEXT NOT NULL REFERENCES cmks(key_id),
        creation_date INTEGER NOT NULL,
        software_wrapped BLOB,
        material_state TEXT NOT NULL DEFAULT 'Present'
      );
      CREATE INDEX key_versions_by_key ON key_versions(key_id);
      CREATE TABLE aliases (
        alias_name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES cmks(key_id),
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
];
