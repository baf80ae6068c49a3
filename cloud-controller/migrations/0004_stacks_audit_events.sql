CREATE TABLE stacks (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE audit_events (
    guid TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    actor_guid TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    target_guid TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_name TEXT NOT NULL,
    space_guid TEXT,
    data TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX audit_events_target ON audit_events (target_guid, seq);
CREATE INDEX audit_events_seq ON audit_events (seq);
