-- Cases (办件; docs/service-items.md, "Cases"): one application for a service item by an
-- applicant, handled by the item's department, with its due dates in working days and
-- an append-only history of its transitions. Cases hold workflow metadata only; the
-- applicant's data stays in datasets under their share rules.
CREATE TABLE service_case (
    -- 办件编号, e.g. "approval-2026-7K3Q9XW2M4"; made by the node.
    number            text PRIMARY KEY CHECK (number ~ '^[a-z][a-z0-9-]{1,62}-[0-9]{4}-[0-9A-Z]{10}$'),
    item              text NOT NULL,
    item_version      integer NOT NULL,
    -- The item's handling department: the only one that moves or reads the case.
    department        text NOT NULL REFERENCES department (code),
    -- The applicant's subject id (统一社会信用代码 or 公民身份号码).
    applicant         text NOT NULL CHECK (length(applicant) = 18),
    state             text NOT NULL CHECK (state IN
                          ('accepted', 'correction', 'decided', 'delivered',
                           'not_accepted', 'withdrawn')),
    opened_at         timestamptz NOT NULL,
    -- 承诺 and 法定办结时限 as instants; moved later by the time spent in 补正.
    promised_due_at   timestamptz NOT NULL,
    legal_due_at      timestamptz NOT NULL CHECK (legal_due_at >= promised_due_at),
    -- Working days the clock stood still in 补正 (already added to both due dates), and
    -- since when the case is in 补正 now.
    stopped_days      integer NOT NULL DEFAULT 0 CHECK (stopped_days >= 0),
    correction_since  timestamptz,
    -- 办结: the outcome, the licence an approval issued, the reason of a refusal.
    decided_at        timestamptz,
    outcome           text CHECK (outcome IN ('approved', 'refused')),
    licence_number    text,
    refusal_reason    text CHECK (length(refusal_reason) BETWEEN 1 AND 500),
    -- When it left the open states (办结, 不予受理 or 撤回); 送达 keeps it.
    closed_at         timestamptz,
    delivered_at      timestamptz,
    updated_at        timestamptz NOT NULL,
    FOREIGN KEY (item, item_version) REFERENCES service_item_version (item, version),
    CHECK ((state = 'correction') = (correction_since IS NOT NULL)),
    CHECK ((state IN ('accepted', 'correction')) = (closed_at IS NULL)),
    CHECK ((state IN ('decided', 'delivered')) = (outcome IS NOT NULL)),
    CHECK ((outcome IS NOT NULL) = (decided_at IS NOT NULL)),
    CHECK ((outcome = 'approved') = (licence_number IS NOT NULL)),
    CHECK ((outcome = 'refused') = (refusal_reason IS NOT NULL)),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
-- The overdue scan: a department's open cases by due date.
CREATE INDEX service_case_open_due ON service_case (department, promised_due_at)
    WHERE closed_at IS NULL;
CREATE INDEX service_case_applicant ON service_case (applicant, opened_at);

CREATE TABLE service_case_history (
    case_number text NOT NULL REFERENCES service_case (number),
    seq         integer NOT NULL CHECK (seq >= 1),
    -- NULL for the opening (受理) of the case.
    from_state  text,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL,
    department  text NOT NULL,
    officer     text,
    reason      text CHECK (length(reason) <= 500),
    PRIMARY KEY (case_number, seq)
);

-- The node opens cases and moves them (state and its columns); the history is
-- append-only: it can neither rewrite nor delete a transition, nor a case.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON service_case, service_case_history TO tongban_node;
        GRANT UPDATE (state, promised_due_at, legal_due_at, stopped_days, correction_since,
                      decided_at, outcome, licence_number, refusal_reason, closed_at,
                      delivered_at, updated_at)
            ON service_case TO tongban_node;
    END IF;
END;
$$;
