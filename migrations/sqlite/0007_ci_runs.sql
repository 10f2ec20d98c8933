-- The CI run a trigger started, as the CI's answer named it (GitHub's
-- workflow_run_id, GitLab's pipeline id, Jenkins' queue item, Azure's run
-- id, Buildkite's build number, Tekton's eventID) and its page. NULL when
-- the CI did not say (a 204). Shown by the jobs and rollouts API.
ALTER TABLE jobs ADD COLUMN run_id TEXT;
ALTER TABLE jobs ADD COLUMN run_url TEXT;
