-- Approvals (issue 15): a person says yes or no before an image is deployed
-- (or, with `approval.before: build`, before it is built). Pending ones
-- survive restarts; a decision is kept per image, stage and digest, so a
-- rejected digest is not asked about again.
CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    image        TEXT NOT NULL,
    -- 'deploy' | 'build'
    stage        TEXT NOT NULL,
    -- deploy: the built digest asked about; build: NULL (not built yet)
    digest       TEXT,
    rollout_id   BIGINT NOT NULL,
    -- pending | approved | rejected | expired | superseded
    state        TEXT NOT NULL,
    reason       TEXT,
    requested_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    decided_at   BIGINT,
    -- the API token's name, or 'lineaged' for an expiry
    decided_by   TEXT
);
CREATE INDEX approvals_pending ON approvals (state, expires_at);
CREATE INDEX approvals_digest ON approvals (image, stage, digest);

-- The row waiting for a person, and what was approved: the digest for a
-- deploy, a flag for a build (the build is not there yet).
ALTER TABLE rollout_images ADD COLUMN approval_id BIGINT;
ALTER TABLE rollout_images ADD COLUMN approved_digest TEXT;
ALTER TABLE rollout_images ADD COLUMN build_approved BOOLEAN NOT NULL DEFAULT FALSE;
