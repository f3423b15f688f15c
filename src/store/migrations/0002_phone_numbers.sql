-- Imported phone numbers (elastic SIP trunking). Portable between SQLite and PostgreSQL
-- like 0001: TEXT and BIGINT only, lists kept as JSON text.

CREATE TABLE IF NOT EXISTS phone_numbers (
    phone_number                  TEXT PRIMARY KEY,
    -- The number without its leading '+': unique, so '+14155550100' and '14155550100'
    -- are one number, and lookups with or without the '+' hit the same row.
    lookup_key                    TEXT NOT NULL UNIQUE,
    nickname                      TEXT,
    inbound_agents                TEXT NOT NULL,
    outbound_agents               TEXT NOT NULL,
    inbound_webhook_url           TEXT,
    termination_uri               TEXT NOT NULL,
    auth_username                 TEXT,
    -- In clear: SIP digest authentication needs it. Never returned by the API.
    auth_password                 TEXT,
    transport                     TEXT NOT NULL,
    allowed_inbound_country_list  TEXT,
    allowed_outbound_country_list TEXT,
    codecs                        TEXT NOT NULL,
    version                       BIGINT NOT NULL,
    created_timestamp             BIGINT NOT NULL,
    last_modification_timestamp   BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS phone_numbers_by_creation
    ON phone_numbers (created_timestamp, phone_number);
