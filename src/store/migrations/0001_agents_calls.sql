-- Agents and calls. Portable between SQLite and PostgreSQL: TEXT and BIGINT only, JSON
-- kept as TEXT, booleans as 0/1 integers.

CREATE TABLE IF NOT EXISTS agents (
    agent_id                    TEXT PRIMARY KEY,
    agent_name                  TEXT,
    version                     BIGINT NOT NULL,
    response_engine             TEXT NOT NULL,
    webhook_url                 TEXT,
    max_call_duration_ms        BIGINT NOT NULL,
    end_call_after_silence_ms   BIGINT NOT NULL,
    ring_duration_ms            BIGINT NOT NULL,
    created_timestamp           BIGINT NOT NULL,
    last_modification_timestamp BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS agents_by_creation ON agents (created_timestamp, agent_id);

CREATE TABLE IF NOT EXISTS calls (
    call_id                      TEXT PRIMARY KEY,
    call_type                    TEXT NOT NULL,
    agent_id                     TEXT NOT NULL,
    agent_name                   TEXT,
    agent_version                BIGINT NOT NULL,
    call_status                  TEXT NOT NULL,
    direction                    TEXT NOT NULL,
    from_number                  TEXT,
    to_number                    TEXT,
    metadata                     TEXT,
    retell_llm_dynamic_variables TEXT,
    custom_sip_headers           TEXT,
    start_timestamp              BIGINT,
    end_timestamp                BIGINT,
    duration_ms                  BIGINT,
    disconnection_reason         TEXT,
    telephony_identifier         TEXT,
    transfer_destination         TEXT,
    sip_uri                      TEXT,
    codec                        TEXT,
    sip_status                   BIGINT,
    registered_until             BIGINT,
    created_timestamp            BIGINT NOT NULL,
    -- 1 once a call engine owns the call (an INVITE claimed the registration, or the
    -- engine created the call itself); a registration can be claimed once only.
    claimed                      BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS calls_by_creation ON calls (created_timestamp, call_id);
CREATE INDEX IF NOT EXISTS calls_by_agent ON calls (agent_id, created_timestamp);
CREATE INDEX IF NOT EXISTS calls_pending ON calls (call_status, registered_until);
