-- The company tables the example webinar rules read (deploy/examples/
-- policy.toml section 4, facts declared in deploy/examples/tokengate.toml),
-- and the triggers that tell tokengate when they change.
--
-- tests/it/facts_example.rs loads this file into a real PostgreSQL and runs
-- the example's webinar rules against it, so it cannot drift.

CREATE TABLE event_hosts (
    event_id text NOT NULL,
    user_id  text NOT NULL,
    PRIMARY KEY (event_id, user_id)
);

CREATE TABLE tickets (
    event_id text NOT NULL,
    user_id  text NOT NULL,
    tier     text NOT NULL DEFAULT 'standard',
    PRIMARY KEY (event_id, user_id)
);

-- NOTIFY <channel>, '["<event_id>", "<user_id>"]' on every change: the
-- payload is the fact's inputs in order, so tokengate drops exactly that
-- cached answer (an empty payload would drop the fact's whole cache). An
-- UPDATE that moves a row tells about the old key and the new one.
CREATE FUNCTION tokengate_notify() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify(TG_ARGV[0], json_build_array(OLD.event_id, OLD.user_id)::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify(TG_ARGV[0], json_build_array(NEW.event_id, NEW.user_id)::text);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER event_hosts_notify AFTER INSERT OR UPDATE OR DELETE ON event_hosts
    FOR EACH ROW EXECUTE FUNCTION tokengate_notify('event_hosts_changed');
CREATE TRIGGER tickets_notify AFTER INSERT OR UPDATE OR DELETE ON tickets
    FOR EACH ROW EXECUTE FUNCTION tokengate_notify('tickets_changed');

-- tokengate reads, and nothing more (its sessions are read-only as well).
GRANT SELECT ON event_hosts, tickets TO tokengate;
