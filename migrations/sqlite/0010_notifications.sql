-- Notifications (issue 15): how far the notifier has read the event log.
-- It starts at the log's end: history is not announced.
CREATE TABLE cursors (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO cursors (name, position) SELECT 'notify', COALESCE(MAX(id), 0) FROM events;
