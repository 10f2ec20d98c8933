-- Deploy windows (issue 15): a deploy due outside its image's window waits
-- in `waiting_for_window` until the next opening, kept in `not_before`.
ALTER TABLE rollout_images DROP CONSTRAINT rollout_images_state_check;
ALTER TABLE rollout_images ADD CONSTRAINT rollout_images_state_check CHECK (state IN (
    'waiting', 'queued', 'building', 'built', 'verifying', 'awaiting_approval', 'waiting_for_window',
    'deploying', 'done', 'failed', 'deploy_failed', 'blocked', 'refused', 'cancelled'));
ALTER TABLE rollout_images ADD COLUMN not_before BIGINT;
CREATE INDEX rollout_images_not_before ON rollout_images (state, not_before);
