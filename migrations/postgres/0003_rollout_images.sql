-- Per-image state inside a rollout. An image waits until every parent that
-- is part of the same rollout has succeeded, then its rebuild is queued (a
-- job), triggered (building, with a deadline), and finishes succeeded or
-- failed; its descendants are blocked when it fails.
CREATE TABLE rollout_images (
    rollout_id     BIGINT NOT NULL REFERENCES rollouts (id),
    image          TEXT NOT NULL,
    wave           INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('waiting', 'queued', 'building', 'succeeded', 'failed', 'blocked', 'cancelled')),
    job_id         BIGINT,
    -- A newer change of an ancestor arrived while this image was building:
    -- rebuild once more when the current build ends.
    rerun          BOOLEAN NOT NULL DEFAULT FALSE,
    build_deadline BIGINT,
    built_digest   TEXT,
    reason         TEXT,
    -- Secret the CI callback must present; random per trigger.
    callback_token TEXT,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, image)
);
CREATE INDEX rollout_images_job ON rollout_images (job_id);
CREATE INDEX rollout_images_deadline ON rollout_images (state, build_deadline);
CREATE INDEX rollouts_state ON rollouts (state, id);
