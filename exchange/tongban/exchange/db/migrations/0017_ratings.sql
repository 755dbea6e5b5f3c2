-- Ratings (好差评, docs/ratings.md). After 办结 the applicant rates the case once (1-5 and a
-- comment), by a one-time link or in the console's subject view; a rating of 1-2 (差评)
-- opens a rectification (整改) the handling department answers within working days, after
-- which the applicant may rate once more. Every row is also an entry of the tamper-evident
-- access log whose reason carries a digest of the row (ratings.verify_ratings compares
-- them), and the node may only add rows: it cannot change or delete a rating, a
-- rectification or an answer.

-- One-time rating links: only the SHA-256 of the random token is stored (as web_link).
CREATE TABLE case_rating_link (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    case_number text NOT NULL REFERENCES service_case (number),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL CHECK (expires_at > created_at),
    used_at     timestamptz
);
CREATE INDEX case_rating_link_case ON case_rating_link (case_number);

-- round 1: the rating; round 2: the one re-rating after the department's answer.
CREATE TABLE case_rating (
    case_number  text NOT NULL REFERENCES service_case (number),
    round        smallint NOT NULL CHECK (round IN (1, 2)),
    item         text NOT NULL,
    item_version integer NOT NULL,
    department   text NOT NULL,
    -- the officer who decided the case (办结), as its history names them
    officer      text,
    applicant    text NOT NULL,
    score        smallint NOT NULL CHECK (score BETWEEN 1 AND 5),
    comment      text NOT NULL CHECK (length(comment) <= 500),
    via          text NOT NULL CHECK (via IN ('link', 'console')),
    rated_at     timestamptz NOT NULL,
    PRIMARY KEY (case_number, round)
);
CREATE INDEX case_rating_department ON case_rating (department, rated_at);
CREATE INDEX case_rating_applicant ON case_rating (applicant);

CREATE TABLE case_rectification (
    case_number text PRIMARY KEY REFERENCES service_case (number),
    department  text NOT NULL,
    opened_at   timestamptz NOT NULL,
    due_at      timestamptz NOT NULL CHECK (due_at > opened_at)
);
CREATE INDEX case_rectification_due ON case_rectification (department, due_at);

CREATE TABLE case_rectification_answer (
    case_number text PRIMARY KEY REFERENCES case_rectification (case_number),
    department  text NOT NULL,
    officer     text,
    answer      text NOT NULL CHECK (length(answer) BETWEEN 1 AND 1000),
    answered_at timestamptz NOT NULL
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON case_rating, case_rectification, case_rectification_answer
            TO tongban_node;
        GRANT SELECT, INSERT ON case_rating_link TO tongban_node;
        GRANT UPDATE (used_at) ON case_rating_link TO tongban_node;
    END IF;
END;
$$;
