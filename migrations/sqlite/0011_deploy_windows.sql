-- Deploy windows (issue 15): a deploy due outside its image's window waits
-- in `waiting_for_window` until the next opening, kept in `not_before`.
-- SQLite cannot alter a CHECK, so rollout_images is rebuilt (as in 0006).
CREATE TABLE rollout_images_new (
    rollout_id      INTEGER NOT NULL REFERENCES rollouts (id),
    image           TEXT NOT NULL,
    wave            INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN (
        'waiting', 'queued', 'building', 'built', 'verifying', 'awaiting_approval', 'waiting_for_window',
        'deploying', 'done', 'failed', 'deploy_failed', 'blocked', 'refused', 'cancelled')),
    job_id          BIGINT,
    rerun           BOOLEAN NOT NULL DEFAULT FALSE,
    build_deadline  BIGINT,
    built_digest    TEXT,
    reason          TEXT,
    callback_token  TEXT,
    updated_at      BIGINT NOT NULL,
    build_attempts  INTEGER NOT NULL DEFAULT 0,
    deploy_job_id   BIGINT,
    verify_job_id   BIGINT,
    verified_digest TEXT,
    approval_id     BIGINT,
    approved_digest TEXT,
    build_approved  BOOLEAN NOT NULL DEFAULT FALSE,
    not_before      BIGINT,
    PRIMARY KEY (rollout_id, image)
);
INSERT INTO rollout_images_new (rollout_id, image, wave, state, job_id, rerun, build_deadline, built_digest, reason,
    callback_token, updated_at, build_attempts, deploy_job_id, verify_job_id, verified_digest, approval_id,
    approved_digest, build_approved)
SELECT rollout_id, image, wave, state, job_id, rerun, build_deadline, built_digest, reason,
    callback_token, updated_at, build_attempts, deploy_job_id, verify_job_id, verified_digest, approval_id,
    approved_digest, build_approved
  FROM rollout_images;
DROP TABLE rollout_images;
ALTER TABLE rollout_images_new RENAME TO rollout_images;
CREATE INDEX rollout_images_job ON rollout_images (job_id);
CREATE INDEX rollout_images_deploy_job ON rollout_images (deploy_job_id);
CREATE INDEX rollout_images_verify_job ON rollout_images (verify_job_id);
CREATE INDEX rollout_images_state ON rollout_images (rollout_id, state);
CREATE INDEX rollout_images_deadline ON rollout_images (state, build_deadline);
CREATE INDEX rollout_images_image ON rollout_images (image, rollout_id);
CREATE INDEX rollout_images_not_before ON rollout_images (state, not_before);
