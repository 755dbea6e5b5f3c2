-- Per-department limits on calls, so one department cannot starve the others
-- (docs/architecture.md, "Fairness between departments"). NULL takes the node's default
-- (TONGBAN_DEPT_MAX_CONCURRENT_CALLS, TONGBAN_DEPT_CALLS_PER_SECOND,
-- TONGBAN_DEPT_MAX_SUBSCRIPTIONS); `tongban dept limits CODE ...` sets them.
ALTER TABLE department
    ADD COLUMN max_concurrent_calls integer
        CHECK (max_concurrent_calls BETWEEN 1 AND 100000),
    ADD COLUMN calls_per_second double precision
        CHECK (calls_per_second > 0 AND calls_per_second <= 1000000),
    ADD COLUMN max_subscriptions integer
        CHECK (max_subscriptions BETWEEN 0 AND 100000);
