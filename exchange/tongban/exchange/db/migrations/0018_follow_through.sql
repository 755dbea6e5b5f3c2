-- Follow-through of 容缺 and 告知承诺 (docs/service-items.md, "Deferred materials and
-- commitments"): a material accepted as deferred, or replaced by a commitment, is recorded
-- on its case with its deadline; a deferral that runs out, or a failed check of a
-- commitment, is a breach, which may suspend the licence the case issued.

-- What an item does on a breach ('suspend': the licence its case issued is suspended;
-- NULL: the breach is recorded and evented only), and which departments may record the
-- checks of its commitments (empty: the handling department itself).
ALTER TABLE service_item_version ADD COLUMN on_breach text CHECK (on_breach IN ('suspend'));
ALTER TABLE service_item_version ADD COLUMN supervisors text[] NOT NULL DEFAULT '{}';

CREATE TABLE case_material (
    case_number  text NOT NULL REFERENCES service_case (number),
    material     text NOT NULL CHECK (material ~ '^[a-z][a-z0-9_-]{0,63}$'),
    -- deferred (容缺: to be supplied by due_at) or committed (告知承诺: checked by due_at).
    kind         text NOT NULL CHECK (kind IN ('deferred', 'committed')),
    due_at       timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL,
    recorded_by  text NOT NULL REFERENCES department (code),
    -- open, then supplied (a deferral met), checked (a commitment found true) or
    -- breached (a deferral run out, a commitment found false).
    state        text NOT NULL CHECK (state IN ('open', 'supplied', 'checked', 'breached')),
    resolved_at  timestamptz,
    resolved_by  text REFERENCES department (code),
    note         text CHECK (length(note) <= 500),
    PRIMARY KEY (case_number, material),
    CHECK ((state = 'open') = (resolved_at IS NULL)),
    CHECK (state <> 'supplied' OR kind = 'deferred'),
    CHECK (state <> 'checked' OR kind = 'committed')
);
-- The sweep for deferrals that ran out.
CREATE INDEX case_material_open_due ON case_material (due_at) WHERE state = 'open';

-- The node records materials and resolves them once; it cannot rewrite what was recorded
-- or delete anything.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON case_material TO tongban_node;
        GRANT UPDATE (state, resolved_at, resolved_by, note) ON case_material TO tongban_node;
    END IF;
END;
$$;
