-- Outbound early media: whether an agent hears the far end's audio (a 183 with SDP)
-- before the call is answered. 0/1 like the other booleans; off by default.

ALTER TABLE agents ADD COLUMN forward_early_media BIGINT NOT NULL DEFAULT 0;
