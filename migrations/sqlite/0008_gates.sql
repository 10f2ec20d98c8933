-- Supply-chain gates (issue 16). A row in `verifying` waits on its verify
-- job; `verified_digest` is the digest that passed (or only warned), so a
-- step knows the gate is behind it and a rebuilt digest is checked anew.
ALTER TABLE rollout_images ADD COLUMN verify_job_id BIGINT;
ALTER TABLE rollout_images ADD COLUMN verified_digest TEXT;
CREATE INDEX rollout_images_verify_job ON rollout_images (verify_job_id);

-- Verdicts per image, digest and policy: a digest checked once is not
-- fetched or scanned again until the policy (rules, keys, scanner) changes.
CREATE TABLE gate_results (
    image       TEXT NOT NULL,
    digest      TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    -- the Evaluation as JSON: verdicts with reasons and evidence
    evaluation  TEXT NOT NULL,
    refused     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (image, digest, policy_hash)
);
CREATE INDEX gate_results_image ON gate_results (image, created_at);

-- Scan reports received from registries (Harbor's SCANNING_COMPLETED), per
-- digest and tracked image (the same digest in another project may have
-- been scanned differently): what a `scan: { source: harbor }` rule judges.
CREATE TABLE scan_reports (
    digest     TEXT NOT NULL,
    source     TEXT NOT NULL,
    image      TEXT NOT NULL,
    -- {scanner, severity, total, fixable, counts: {critical, high, ...}}
    report     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (digest, source, image)
);
