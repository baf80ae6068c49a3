CREATE TABLE users (
    guid TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE organizations (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE spaces (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    org_guid TEXT NOT NULL REFERENCES organizations(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (org_guid, name)
);
CREATE TABLE apps (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    state TEXT NOT NULL,
    stack TEXT NOT NULL,
    buildpacks TEXT NOT NULL,
    env TEXT NOT NULL,
    droplet_guid TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (space_guid, name)
);
CREATE TABLE packages (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE builds (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    package_guid TEXT NOT NULL REFERENCES packages(guid) ON DELETE CASCADE,
    state TEXT NOT NULL,
    error TEXT,
    stack TEXT NOT NULL,
    buildpacks TEXT NOT NULL,
    droplet_guid TEXT,
    stager_id TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE droplets (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    build_guid TEXT NOT NULL,
    package_guid TEXT NOT NULL,
    state TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    detected_buildpack TEXT,
    buildpacks TEXT NOT NULL,
    process_types TEXT NOT NULL,
    start_command TEXT,
    stack TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE app_caches (
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    stack TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (app_guid, stack)
);
