-- berth desired state on PostgreSQL: deployments, API keys, replica records.
--
-- The end state of the SQLite history (migrations/0001 to 0004) in one step: PostgreSQL has no
-- earlier berth databases to carry forward. Timestamps are BIGINT milliseconds since the Unix
-- epoch. Unsigned domain values (capacities, limits, pids, ports) are BIGINT, checked on the way
-- back; every integer is BIGINT so that it reads back as the store's i64.

CREATE TABLE deployments (
    -- Creation order. A sequence never hands a value out twice, so "newest first" stays stable
    -- even when several deployments share a millisecond or rows were removed in between.
    seq                BIGSERIAL PRIMARY KEY,
    workspace_id       TEXT    NOT NULL,
    deployed_model     TEXT    NOT NULL,
    model_name         TEXT    NOT NULL,
    base_model         TEXT    NOT NULL,
    name               TEXT,
    plan               TEXT,
    model_unit_spec    TEXT,
    status             TEXT    NOT NULL
        CHECK (status IN ('PENDING', 'UPDATING', 'RUNNING', 'STOPPED', 'DELETING', 'FAILED')),
    capacity           BIGINT  NOT NULL CHECK (capacity >= 0),
    base_capacity      BIGINT  NOT NULL CHECK (base_capacity >= 0),
    ready_capacity     BIGINT  NOT NULL DEFAULT 0 CHECK (ready_capacity >= 0),
    max_context_length BIGINT,
    enable_thinking    BOOLEAN,
    rpm_limit          BIGINT,
    tpm_limit          BIGINT,
    fail_reason        TEXT,
    status_message     TEXT,
    creator            TEXT    NOT NULL,
    modifier           TEXT    NOT NULL,
    gmt_create         BIGINT  NOT NULL,
    gmt_modified       BIGINT  NOT NULL,
    generation         BIGINT  NOT NULL DEFAULT 1,
    -- Autoscaling (a berth extension): all five set, or none (autoscaling off). Capacities are
    -- in units like `capacity`; the API validates the values, the CHECKs keep the row coherent.
    autoscale_min_capacity    BIGINT CHECK (autoscale_min_capacity >= 0),
    autoscale_max_capacity    BIGINT CHECK (autoscale_max_capacity >= autoscale_min_capacity),
    autoscale_target_inflight BIGINT CHECK (autoscale_target_inflight >= 1),
    autoscale_down_delay_secs BIGINT CHECK (autoscale_down_delay_secs >= 0),
    autoscale_zero_after_secs BIGINT CHECK (autoscale_zero_after_secs >= 0),
    -- The logical key: deployed_model is unique within a workspace.
    CONSTRAINT deployments_key UNIQUE (workspace_id, deployed_model)
);

-- Listing a workspace newest first: an index range scan, walked backwards, no sort.
CREATE INDEX deployments_by_workspace ON deployments (workspace_id, seq);

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    -- Insertion order, which breaks ties between keys created in the same millisecond.
    seq          BIGSERIAL NOT NULL,
    workspace_id TEXT    NOT NULL,
    -- SHA-256 of the secret; the secret itself is never stored.
    hash         BYTEA   NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created      BIGINT  NOT NULL,
    revoked      BOOLEAN NOT NULL DEFAULT FALSE
);

-- Replicas are not tied to deployment rows by a foreign key on purpose: a replica record may
-- outlive its deployment (a restarted berth must still find and stop the process).
CREATE TABLE replicas (
    id             TEXT   PRIMARY KEY,
    workspace_id   TEXT   NOT NULL,
    deployed_model TEXT   NOT NULL,
    pid            BIGINT NOT NULL,
    port           BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    -- What proves a recorded replica is the process berth started (adoption after a restart):
    -- the secret it was given at spawn and its process start time (clock ticks after boot, from
    -- /proc/PID/stat). A record is written before the spawn with pid 0 and proc_start 0.
    secret         TEXT   NOT NULL DEFAULT '',
    proc_start     BIGINT NOT NULL DEFAULT 0
);
