CREATE TABLE processes (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    command TEXT,
    instances INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    health_check_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (app_guid, kind)
);
CREATE TABLE domains (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE routes (
    guid TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    domain_guid TEXT NOT NULL REFERENCES domains(guid),
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (host, path, domain_guid)
);
CREATE TABLE route_destinations (
    guid TEXT PRIMARY KEY,
    route_guid TEXT NOT NULL REFERENCES routes(guid) ON DELETE CASCADE,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    port INTEGER NOT NULL,
    UNIQUE (route_guid, app_guid, process_type)
);
