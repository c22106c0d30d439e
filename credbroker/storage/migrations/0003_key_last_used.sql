-- When each secret key was last used, written in batches (not on every request).
ALTER TABLE secret_keys ADD COLUMN last_used_time timestamptz;
