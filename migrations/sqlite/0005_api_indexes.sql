-- Lookups the status API makes per image and per rollout: without these,
-- GET /api/v1/images/{ref} scans jobs, rollout_images and events (1M+ rows).
CREATE INDEX jobs_image ON jobs (image, id);
CREATE INDEX rollout_images_image ON rollout_images (image, rollout_id);
-- The few events that say why images joined a rollout (the cause chain);
-- partial, so the bulk of the log costs nothing here.
CREATE INDEX events_rollout_cause ON events (rollout_id, id)
    WHERE kind IN ('rollout_started', 'rollout_joined', 'rollout_requested', 'rollout_reconciled');
