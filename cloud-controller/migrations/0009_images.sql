-- The image store: OCI images uploaded as archives (an OCI layout or `docker save` tar), kept
-- as one blob each; `digest` (the manifest's) is NULL while the upload is being checked.
CREATE TABLE images (
    guid TEXT PRIMARY KEY,
    name TEXT,
    digest TEXT UNIQUE,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX images_name ON images (name);
-- `stack.<name>.image`: the image stagings and instances of the stack run on (NULL: each
-- stager's and cell's own copy of the stack), and since when.
ALTER TABLE stacks ADD COLUMN image_digest TEXT;
ALTER TABLE stacks ADD COLUMN image_since TEXT;
