-- Electronic supervision (电子监察; docs/supervision.md): which materials of a case were
-- obtained electronically and which the applicant submitted, as the last materials
-- resolution (LicenceService.ResolveMaterials naming the case) before the case closed.
-- Material codes and sources only: no licence number, dataset key or value (they name
-- the applicant or hold their data).

-- Required materials of a resolution, and of those the ones obtained electronically
-- (licence or shared data): the report's 免提交率 and 全程网办率 read these counts, so they
-- are derived from the per-material arrays by the database, never given by the node.
CREATE FUNCTION supervision_required_count(required boolean[]) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT count(*)::integer FROM unnest(required) AS r WHERE r $$;

CREATE FUNCTION supervision_electronic_count(sources text[], required boolean[])
    RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT count(*)::integer FROM unnest(sources, required) AS m (source, required)
          WHERE m.required AND m.source <> 'submit' $$;

CREATE TABLE service_case_resolution (
    case_number      text PRIMARY KEY REFERENCES service_case (number),
    -- The item version the materials were resolved by (the item's current one then).
    item_version     integer NOT NULL CHECK (item_version >= 1),
    resolved_at      timestamptz NOT NULL,
    -- One element per material of the item, in its order: the code, where it came from
    -- ('licence', 'shared-data' or 'submit'), and whether the item requires it.
    materials        text[] NOT NULL,
    sources          text[] NOT NULL,
    required         boolean[] NOT NULL,
    required_count   integer GENERATED ALWAYS AS (supervision_required_count(required)) STORED,
    electronic_count integer
        GENERATED ALWAYS AS (supervision_electronic_count(sources, required)) STORED,
    CHECK (cardinality(materials) BETWEEN 1 AND 100),
    CHECK (cardinality(sources) = cardinality(materials)),
    CHECK (cardinality(required) = cardinality(materials)),
    CHECK (sources <@ ARRAY['licence', 'shared-data', 'submit']::text[]),
    CHECK (array_position(materials, NULL) IS NULL AND array_position(sources, NULL) IS NULL
           AND array_position(required, NULL) IS NULL)
);

-- 补正 used more than once: the report counts a case's transitions into 补正.
CREATE INDEX service_case_history_corrections ON service_case_history (case_number)
    WHERE to_state = 'correction';
-- A department's cases by the month they were opened (the report's rows).
CREATE INDEX service_case_department_opened ON service_case (department, opened_at);
-- /metrics: the share of recent decisions made within the promised limit.
CREATE INDEX service_case_decided ON service_case (decided_at) WHERE decided_at IS NOT NULL;

-- The node records a case's resolution and replaces it with a later one (the last before
-- the decision counts); it cannot delete one or move it to another case.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON service_case_resolution TO tongban_node;
        GRANT UPDATE (item_version, resolved_at, materials, sources, required)
            ON service_case_resolution TO tongban_node;
    END IF;
END;
$$;
