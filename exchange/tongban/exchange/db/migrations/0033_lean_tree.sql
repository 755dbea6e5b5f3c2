-- The integrator's share of an append, made smaller (docs/audit-log.md, "Sequencing and
-- integration").
--
-- log_node now receives only the perfect subtrees of 256 leaves and more: about one row
-- per 128 entries instead of two per entry. A proof's smaller nodes are computed from
-- their leaves in access_log (at most 256, read by index). The rows already stored at
-- levels 0 to 7 stay (the log is append-only) and are no longer read.
COMMENT ON TABLE log_node IS
    'Hashes of the perfect subtrees of 256 leaves and more: (level, idx) covers leaves '
    '[idx * 2^level, (idx + 1) * 2^level). Smaller subtrees are computed from access_log; '
    'rows below level 8 written before migration 0033 are not read.';

-- Entries arrive in time order (give or take the clocks of nodes sharing the database),
-- so a block-range index finds a time window as well as a B-tree for far less upkeep
-- per row. autosummarize: each range is summarised as soon as it is full, not at the
-- next vacuum.
DROP INDEX access_log_search_at;
CREATE INDEX access_log_search_at ON access_log_search USING brin (at)
    WITH (autosummarize = on);
