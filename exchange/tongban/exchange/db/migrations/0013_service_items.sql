-- The service-item catalogue (事项目录; docs/service-items.md): the items a department
-- handles, with their time limits in working days and their materials, versioned as
-- datasets are. A version is never changed; a changed spec is a new version.
CREATE TABLE service_item (
    code            text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$'),
    -- The handling department: the one that registered it, and the only one that may
    -- register its new versions.
    department      text NOT NULL REFERENCES department (code),
    current_version integer NOT NULL CHECK (current_version >= 1),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX service_item_department ON service_item (department, code);

CREATE TABLE service_item_version (
    item                text NOT NULL REFERENCES service_item (code),
    version             integer NOT NULL CHECK (version >= 1),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    legal_basis         text NOT NULL CHECK (length(legal_basis) BETWEEN 1 AND 2000),
    purpose             text NOT NULL CHECK (length(purpose) BETWEEN 1 AND 200),
    -- 法定 and 承诺办结时限, working days; 即办 items promise 0.
    legal_limit_days    integer NOT NULL CHECK (legal_limit_days BETWEEN 1 AND 3650),
    promised_limit_days integer NOT NULL
                        CHECK (promised_limit_days BETWEEN 0 AND legal_limit_days),
    immediate           boolean NOT NULL,
    -- The materials in order: [{code, name, required, source: {...}, defer_days,
    -- commitment_check_days}], checked by tongban.exchange.licensing.items.
    materials           jsonb NOT NULL CHECK (jsonb_typeof(materials) = 'array'),
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (item, version),
    CHECK (immediate = (promised_limit_days = 0))
);

-- The node registers items and versions; it moves an item's current version forward and
-- cannot rewrite or delete a version.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON service_item, service_item_version TO tongban_node;
        GRANT UPDATE (current_version, updated_at) ON service_item TO tongban_node;
    END IF;
END;
$$;
