-- berth desired state: deployments, API keys, replica records.
--
-- Timestamps are INTEGER milliseconds since the Unix epoch. Unsigned domain values (capacities,
-- limits, pids, ports) are stored as INTEGER and checked on the way back.

CREATE TABLE deployments (
    -- Creation order. AUTOINCREMENT never reuses a value, so "newest first" stays stable even
    -- when several deployments share a millisecond or rows were removed in between.
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id       TEXT    NOT NULL,
    deployed_model     TEXT    NOT NULL,
    model_name         TEXT    NOT NULL,
    base_model         TEXT    NOT NULL,
    name               TEXT,
    plan               TEXT,
    model_unit_spec    TEXT,
    status             TEXT    NOT NULL
        CHECK (status IN ('PENDING', 'UPDATING', 'RUNNING', 'STOPPED', 'DELETING', 'FAILED')),
    capacity           INTEGER NOT NULL CHECK (capacity >= 0),
    base_capacity      INTEGER NOT NULL CHECK (base_capacity >= 0),
    ready_capacity     INTEGER NOT NULL DEFAULT 0 CHECK (ready_capacity >= 0),
    max_context_length INTEGER,
    enable_thinking    INTEGER,
    rpm_limit          INTEGER,
    tpm_limit          INTEGER,
    fail_reason        TEXT,
    status_message     TEXT,
    creator            TEXT    NOT NULL,
    modifier           TEXT    NOT NULL,
    gmt_create         INTEGER NOT NULL,
    gmt_modified       INTEGER NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,
    -- The logical key: deployed_model is unique within a workspace.
    CONSTRAINT deployments_key UNIQUE (workspace_id, deployed_model)
);

-- Listing a workspace newest first: an index range scan, walked backwards, no sort.
CREATE INDEX deployments_by_workspace ON deployments (workspace_id, seq);

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY NOT NULL,
    workspace_id TEXT    NOT NULL,
    -- SHA-256 of the secret; the secret itself is never stored.
    hash         BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
    created      INTEGER NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
);

-- Replicas are not tied to deployment rows by a foreign key on purpose: a replica record may
-- outlive its deployment (a restarted berth must still find and stop the process).
CREATE TABLE replicas (
    id             TEXT    PRIMARY KEY NOT NULL,
    workspace_id   TEXT    NOT NULL,
    deployed_model TEXT    NOT NULL,
    pid            INTEGER NOT NULL,
    port           INTEGER NOT NULL,
    started_at     INTEGER NOT NULL
);
