-- Personal fields (个人信息) of an unconditional dataset are shared only under a grant,
-- or under a law the dataset cites for them (docs/personal-data.md). Each version keeps
-- the laws it cites: [{"law": ..., "article": ..., "fields": [...]}, ...].
ALTER TABLE dataset_version
    ADD COLUMN personal_bases jsonb NOT NULL DEFAULT '[]'
        CHECK (jsonb_typeof(personal_bases) = 'array');
