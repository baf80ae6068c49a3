-- What a user sets on a process (PATCH /v3/processes/:guid); NULL: the droplet's or the default.
ALTER TABLE processes ADD COLUMN user_command TEXT;
ALTER TABLE processes ADD COLUMN health_check_endpoint TEXT;
ALTER TABLE processes ADD COLUMN health_check_timeout INTEGER;
ALTER TABLE processes ADD COLUMN health_check_invocation_timeout INTEGER;
