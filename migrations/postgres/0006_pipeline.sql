-- The typed rollout pipeline and exactly-once fixes (issue 10).

-- Per-image pipeline states. `succeeded` becomes `done` (the image went
-- through every stage its config uses); `built` is the build finished,
-- `deploy_failed` a build that is fine but did not reach its workload.
ALTER TABLE rollout_images DROP CONSTRAINT rollout_images_state_check;
UPDATE rollout_images SET state = 'done' WHERE state = 'succeeded';
ALTER TABLE rollout_images ADD CONSTRAINT rollout_images_state_check CHECK (state IN (
    'waiting', 'queued', 'building', 'built', 'verifying', 'awaiting_approval', 'deploying', 'done',
    'failed', 'deploy_failed', 'blocked', 'refused', 'cancelled'));
-- The deploy job of the image in this rollout (job_id stays the rebuild's).
ALTER TABLE rollout_images ADD COLUMN deploy_job_id BIGINT;
CREATE INDEX rollout_images_deploy_job ON rollout_images (deploy_job_id);
-- "Is anything in this rollout unfinished?" after each result, without
-- reading the rollout's rows.
CREATE INDEX rollout_images_state ON rollout_images (rollout_id, state);

-- One running rollout at a time, enforced by the database: two replicas
-- planning one change at once cannot open two. Older duplicates (possible
-- before this index) are cancelled; reconcile picks up what they left.
UPDATE jobs SET state = 'cancelled', last_error = 'duplicate running rollout closed by migration 0006'
 WHERE state IN ('pending', 'running')
   AND rollout_id IN (SELECT id FROM rollouts WHERE state = 'running'
                       AND id < (SELECT MAX(id) FROM rollouts WHERE state = 'running'));
UPDATE rollout_images SET state = 'cancelled', reason = 'duplicate running rollout closed by migration 0006'
 WHERE state IN ('waiting', 'queued', 'building')
   AND rollout_id IN (SELECT id FROM rollouts WHERE state = 'running'
                       AND id < (SELECT MAX(id) FROM rollouts WHERE state = 'running'));
UPDATE rollouts SET state = 'cancelled', finished_at = created_at
 WHERE state = 'running' AND id < (SELECT MAX(id) FROM rollouts WHERE state = 'running');
CREATE UNIQUE INDEX rollouts_one_running ON rollouts (state) WHERE state = 'running';

-- What each managed image was built on, per parent: the parent digests its
-- last successful build was triggered with (source 'build'), or what its
-- OCI base annotation names (source 'annotation'). An image is stale when a
-- parent's current digest differs from its row here; no row, no judgement.
CREATE TABLE image_bases (
    image      TEXT NOT NULL REFERENCES images (name),
    parent     TEXT NOT NULL REFERENCES images (name),
    digest     TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('build', 'annotation')),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (image, parent)
);
INSERT INTO image_bases (image, parent, digest, source, updated_at)
SELECT i.name, e.parent, i.base_digest, 'annotation', i.updated_at
  FROM images i JOIN edges e ON e.child = i.name
 WHERE i.base_digest IS NOT NULL AND (i.base_name IS NULL OR i.base_name = e.parent);

-- The outbox of digest changes: written in the same transaction as the
-- observation that found the change, consumed by the rollout engine in the
-- transaction that plans it. A crash between the two loses nothing.
-- One pending row per image: a change within the settle window replaces
-- the new digest and pushes `due_at` out; `old_digest` stays the first.
CREATE TABLE changes (
    id           BIGSERIAL PRIMARY KEY,
    image        TEXT NOT NULL REFERENCES images (name),
    old_digest   TEXT NOT NULL,
    new_digest   TEXT NOT NULL,
    -- The tag's top-level digest when new_digest tracks platforms (what a
    -- deploy of the rebuilt image rolls out).
    top_digest   TEXT,
    source       TEXT NOT NULL,
    observed_at  BIGINT NOT NULL,
    due_at       BIGINT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    coalesced    INTEGER NOT NULL DEFAULT 1,
    processed_at BIGINT
);
CREATE UNIQUE INDEX changes_one_pending ON changes (image) WHERE state = 'pending';
CREATE INDEX changes_due ON changes (due_at, id) WHERE state = 'pending';
