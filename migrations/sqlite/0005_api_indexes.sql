-- Lookups the status API makes per image and per rollout: without these,
-- GET /api/v1/images/{ref} scans jobs, rollout_images and events (1M+ rows).
CREATE INDEX jobs_image ON jobs (image, id);
CREATE INDEX rollout_images_image ON rollout_images (image, rollout_id);
CREATE INDEX events_rollout ON events (rollout_id, id) WHERE rollout_id IS NOT NULL;
