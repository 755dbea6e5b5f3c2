-- Packages (一件事一次办; docs/service-items.md, "Packages"): items an applicant needs for one
-- goal, opened in one trip. A package spec is versioned like an item; an opened package
-- has a step per item, which follows the case its department opens for it.
CREATE TABLE service_package (
    code            text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9-]{1,63}$'),
    -- The coordinating department: registers its versions and opens it for applicants.
    department      text NOT NULL REFERENCES department (code),
    current_version integer NOT NULL CHECK (current_version >= 1),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE service_package_version (
    package     text NOT NULL REFERENCES service_package (code),
    version     integer NOT NULL CHECK (version >= 1),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL CHECK (length(description) <= 2000),
    -- [{item, after: [item, ...], applicant_from}], checked by
    -- tongban.exchange.licensing.packages (no cycles, known items).
    steps       jsonb NOT NULL CHECK (jsonb_typeof(steps) = 'array'),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (package, version)
);

-- An opened package (一次受理).
CREATE TABLE package_case (
    number          text PRIMARY KEY CHECK (number ~ '^[a-z][a-z0-9-]{1,62}-[0-9]{4}-[0-9A-Z]{10}$'),
    package         text NOT NULL,
    package_version integer NOT NULL,
    department      text NOT NULL REFERENCES department (code),
    applicant       text NOT NULL CHECK (length(applicant) = 18),
    opened_at       timestamptz NOT NULL,
    FOREIGN KEY (package, package_version) REFERENCES service_package_version (package, version)
);
CREATE INDEX package_case_applicant ON package_case (applicant, opened_at);

CREATE TABLE package_step (
    package_number  text NOT NULL REFERENCES package_case (number),
    item            text NOT NULL,
    department      text NOT NULL REFERENCES department (code),
    after_items     text[] NOT NULL,
    applicant_from  text,
    state           text NOT NULL CHECK (state IN
                        ('waiting', 'ready', 'open', 'done', 'failed', 'blocked')),
    -- Known when the step is ready (the package's, or the holder of the licence the
    -- applicant_from step issued).
    applicant       text CHECK (length(applicant) = 18),
    case_number     text UNIQUE,
    licence_number  text,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (package_number, item),
    CHECK ((state IN ('waiting', 'blocked')) OR applicant IS NOT NULL),
    CHECK ((state IN ('open', 'done', 'failed')) = (case_number IS NOT NULL)),
    CHECK (licence_number IS NULL OR state = 'done')
);

-- A case opened for a package step names its package.
ALTER TABLE service_case ADD COLUMN package_number text REFERENCES package_case (number);
CREATE INDEX service_case_package ON service_case (package_number)
    WHERE package_number IS NOT NULL;

-- The node registers packages, opens them and moves their steps; it cannot rewrite a
-- package version or an opened package.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON service_package, service_package_version, package_case,
            package_step TO tongban_node;
        GRANT UPDATE (current_version, updated_at) ON service_package TO tongban_node;
        GRANT UPDATE (state, applicant, case_number, licence_number, updated_at)
            ON package_step TO tongban_node;
    END IF;
END;
$$;

-- The licence type an item's approval issues (NULL: none). An approval of such an item
-- names the licence; an approval of another item names none, so "approved" no longer
-- implies a licence number.
ALTER TABLE service_item_version ADD COLUMN issues_licence text
    CHECK (issues_licence ~ '^[a-z][a-z0-9-]{1,63}$');
DO $$
DECLARE
    name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
    WHERE conrelid = 'service_case'::regclass AND contype = 'c'
      AND pg_get_constraintdef(oid) LIKE '%''approved''%licence_number IS NOT NULL%';
    EXECUTE format('ALTER TABLE service_case DROP CONSTRAINT %I', name);
END;
$$;
ALTER TABLE service_case ADD CONSTRAINT service_case_licence_of_approval
    CHECK (licence_number IS NULL OR outcome = 'approved');
