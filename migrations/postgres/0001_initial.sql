-- lineaged schema, Postgres. Never edit an applied migration: add a new one.
--
-- Times are BIGINT milliseconds since the Unix epoch, written by the
-- application from its `now` parameter, not by `now()` in SQL: the queue and
-- lease logic take time as a parameter so tests control it, and both
-- backends share the same SQL and the same row types.

-- Every image the config ever named. Removed images become inactive and keep
-- their history (observations, jobs, events refer to them by name).
CREATE TABLE images (
    name            TEXT PRIMARY KEY,            -- normalised reference
    managed         BOOLEAN NOT NULL,
    active          BOOLEAN NOT NULL DEFAULT TRUE,
    current_digest  TEXT,
    last_checked_at BIGINT,
    last_changed_at BIGINT,
    last_error      TEXT,
    base_name       TEXT,                        -- org.opencontainers.image.base.name
    base_digest     TEXT,                        -- org.opencontainers.image.base.digest
    updated_at      BIGINT NOT NULL
);

-- Lineage edges, child built from parent. Replaced wholesale on config sync.
CREATE TABLE edges (
    child  TEXT NOT NULL REFERENCES images (name),
    parent TEXT NOT NULL REFERENCES images (name),
    PRIMARY KEY (child, parent)
);
CREATE INDEX edges_parent ON edges (parent);

-- Digest history: every observation, not only changes.
CREATE TABLE digest_observations (
    id          BIGSERIAL PRIMARY KEY,
    image       TEXT NOT NULL REFERENCES images (name),
    digest      TEXT NOT NULL,
    platform    TEXT NOT NULL DEFAULT '',        -- '' = the tag's top-level digest
    source      TEXT NOT NULL CHECK (source IN ('poll', 'push', 'callback', 'reconcile')),
    observed_at BIGINT NOT NULL
);
CREATE INDEX digest_observations_image ON digest_observations (image, id);

CREATE TABLE rollouts (
    id          BIGSERIAL PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'partially_failed', 'cancelled')),
    cause       TEXT NOT NULL DEFAULT '{}',      -- JSON: what changed
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);

-- The durable job queue. State machine:
--   pending → running → succeeded | failed (permanent) | pending (retry) | dead (attempts used up)
--   running → pending (lease expired, rescued); pending|running → cancelled
CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL,               -- rebuild | deploy | …
    unique_key      TEXT,                        -- coalescing key, e.g. rebuild:<image>
    idempotency_key TEXT NOT NULL UNIQUE,        -- sent to CI; identical on every retry
    image           TEXT,
    rollout_id      BIGINT REFERENCES rollouts (id),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    priority        INTEGER NOT NULL DEFAULT 0,  -- lower runs first
    payload         TEXT NOT NULL DEFAULT '{}',  -- JSON; the newest enqueue wins
    reasons         TEXT NOT NULL DEFAULT '[]',  -- JSON array; enqueues merge into it
    enqueue_count   INTEGER NOT NULL DEFAULT 1,  -- how many enqueues coalesced here
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 10,
    run_at          BIGINT NOT NULL,
    locked_by       TEXT,
    locked_until    BIGINT,
    last_error      TEXT,
    result          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
-- At most one pending job per key: a second enqueue coalesces into it
-- (INSERT … ON CONFLICT on this partial index).
CREATE UNIQUE INDEX jobs_one_pending_per_key ON jobs (unique_key)
    WHERE state = 'pending' AND unique_key IS NOT NULL;
-- The claim query's order; partial so finished jobs cost nothing.
CREATE INDEX jobs_due ON jobs (priority, run_at, id) WHERE state = 'pending';
-- The rescuer's scan, and "is this key running already?".
CREATE INDEX jobs_running ON jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_running_key ON jobs (unique_key) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs (state, id);

-- Append-only log of everything that happens, for the API and audits.
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    image      TEXT,
    rollout_id BIGINT,
    job_id     BIGINT,
    data       TEXT NOT NULL DEFAULT '{}'
);

-- Singleton duties (polling schedule, rescuer): one holder until expires_at.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);
