-- A storage quota per department (docs/architecture.md, "Storage quotas"): the bytes its
-- datasets' record versions take may not grow past it, so one department's adapter
-- (broken, or in an attacker's hands) cannot fill the database's disk for everyone.
--
-- Each dataset's stream row counts the bytes of every record version written to it
-- (stored_bytes: the key and the JSON as written, plus a fixed allowance per version for
-- its row, its event and their index entries; sharing/storage.py, VERSION_BYTES), and of
-- its catalogue versions (each row as stored, plus the same allowance). The record
-- writes add to it in the upsert that already advances the dataset's position, so
-- counting takes no statement and no lock of its own.
--
-- The check is a trigger on that row. Summing a department's datasets on every write
-- would cost each write a scan of them, so each row carries headroom_until: up to there
-- the row may grow unchecked (the trigger's WHEN skips the call). Past it, the trigger
-- sums the department's datasets, refuses the write (SQLSTATE TB001) if it would take
-- them past the quota, and otherwise grants new headroom: at most 16 MiB, and at most
-- an equal share, among the department's datasets, of what the quota leaves. Headroom
-- granted never sums past the quota, and near it every write is checked.
--
-- The quota is the department's own (max_stored_bytes, set by `tongban dept limits CODE
-- --stored SIZE`), or else the node's default, which every pooled session of the node
-- carries as the setting tongban.max_stored_bytes (TONGBAN_DEPT_MAX_STORED_BYTES). A
-- session without either (the operator's own login) is not limited.

ALTER TABLE department
    ADD COLUMN max_stored_bytes bigint CHECK (max_stored_bytes >= 0);

ALTER TABLE dataset_stream
    ADD COLUMN stored_bytes bigint NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    ADD COLUMN headroom_until bigint NOT NULL DEFAULT 0;

-- The trigger sums a department's datasets through this.
CREATE INDEX dataset_owner ON dataset (owner);

-- Every dataset gets its stream row when it is registered (sharing/datasets.py), so a
-- write always updates one and the trigger below sees every write. The datasets
-- registered before this migration get theirs here, with what they hold already.
INSERT INTO dataset_stream (dataset, next_position)
SELECT code, 0 FROM dataset
ON CONFLICT (dataset) DO NOTHING;

UPDATE dataset_stream s SET stored_bytes =
    coalesce((SELECT sum(octet_length(r.key) + coalesce(octet_length(r.data::text), 0) + 400)
              FROM record r WHERE r.dataset = s.dataset), 0)
  + coalesce((SELECT sum(pg_column_size(v.*) + 400)
              FROM dataset_version v WHERE v.dataset = s.dataset), 0);

CREATE FUNCTION dataset_stream_quota() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dept text;
    quota bigint;
    others bigint;
    datasets bigint;
    room bigint;
BEGIN
    SELECT d.owner,
           coalesce(p.max_stored_bytes,
                    nullif(current_setting('tongban.max_stored_bytes', true), '')::bigint)
      INTO dept, quota
      FROM dataset d JOIN department p ON p.code = d.owner
     WHERE d.code = NEW.dataset;
    IF quota IS NULL THEN
        NEW.headroom_until := NEW.stored_bytes + 16777216;
        RETURN NEW;
    END IF;
    SELECT coalesce(sum(s.stored_bytes), 0), count(*)
      INTO others, datasets
      FROM dataset d JOIN dataset_stream s ON s.dataset = d.code
     WHERE d.owner = dept AND d.code <> NEW.dataset;
    room := quota - others - NEW.stored_bytes;
    IF room < 0 THEN
        RAISE EXCEPTION 'department % would store % bytes, past its quota of % bytes',
                        dept, others + NEW.stored_bytes, quota
            USING ERRCODE = 'TB001',
                  DETAIL = format('%s|%s|%s|%s', dept, others + OLD.stored_bytes,
                                  NEW.stored_bytes - OLD.stored_bytes, quota);
    END IF;
    NEW.headroom_until := NEW.stored_bytes + least(16777216, room / (datasets + 1));
    RETURN NEW;
END;
$$;

CREATE TRIGGER dataset_stream_quota
    BEFORE UPDATE ON dataset_stream
    FOR EACH ROW WHEN (NEW.stored_bytes > OLD.headroom_until)
    EXECUTE FUNCTION dataset_stream_quota();
