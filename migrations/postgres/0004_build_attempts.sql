-- How many builds of this image the rollout has started: a build that
-- reports nothing before its deadline is retried up to a limit.
ALTER TABLE rollout_images ADD COLUMN build_attempts INTEGER NOT NULL DEFAULT 0;
