-- Per-registry health for status: healthy / degraded / down, the last
-- error, when the watcher tries again, and the rate-limit budget the
-- registry last reported.
CREATE TABLE registry_health (
    host                TEXT PRIMARY KEY,
    state               TEXT NOT NULL CHECK (state IN ('healthy', 'degraded', 'down')),
    consecutive_errors  INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    last_error_at       BIGINT,
    last_success_at     BIGINT,
    next_attempt_at     BIGINT,
    ratelimit_remaining BIGINT,
    ratelimit_limit     BIGINT,
    updated_at          BIGINT NOT NULL
);
