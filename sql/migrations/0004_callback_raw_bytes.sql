-- Keep a callback's body byte for byte (raw_body is text: it cannot hold a NUL or
-- invalid UTF-8). Expand only: raw_body stays, as a readable copy.
ALTER TABLE mpesa_callbacks ADD COLUMN raw_bytes bytea;
