-- Admin buildpacks (CF V3 /v3/buildpacks). Flags are BIGINT 0/1 (the same on SQLite and
-- PostgreSQL through sqlx Any). A NULL stack means any stack; one name per stack, and one
-- with no stack: NULLs never collide in a UNIQUE constraint, so the index is on
-- COALESCE(stack, ''). Positions are 1..n without gaps, kept so by the code (no constraint:
-- a shift would break it in the middle of its UPDATE).
CREATE TABLE buildpacks (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    stack TEXT,
    position BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    locked BIGINT NOT NULL,
    state TEXT NOT NULL,
    filename TEXT,
    sha256 TEXT,
    size BIGINT,
    builtin BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX buildpacks_name_stack ON buildpacks (name, (COALESCE(stack, '')));
CREATE INDEX buildpacks_position ON buildpacks (position);
-- One row every change of the buildpack order updates first: concurrent changes (also from
-- other controllers on the same PostgreSQL) wait for each other, so positions stay 1..n.
CREATE TABLE buildpack_order (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO buildpack_order (id, version) VALUES (1, 0);
