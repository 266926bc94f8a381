-- Bootstrap keys of earlier versions had an id derived from their secret ('ak-' + the first 48
-- bits of its SHA-256, which is also the start of the stored hash), shown to the workspace as a
-- deployment's creator and modifier: an offline check for guesses of a weak secret. Each such id
-- is replaced by a random one, and the deployments that name it follow.
CREATE TEMP TABLE key_renames AS
    SELECT id AS old_id, 'ak-' || lower(hex(randomblob(6))) AS new_id
    FROM api_keys
    WHERE id = 'ak-' || lower(hex(substr(hash, 1, 6)));

UPDATE deployments
    SET creator = (SELECT new_id FROM key_renames WHERE old_id = deployments.creator)
    WHERE creator IN (SELECT old_id FROM key_renames);

UPDATE deployments
    SET modifier = (SELECT new_id FROM key_renames WHERE old_id = deployments.modifier)
    WHERE modifier IN (SELECT old_id FROM key_renames);

UPDATE api_keys
    SET id = (SELECT new_id FROM key_renames WHERE old_id = api_keys.id)
    WHERE id IN (SELECT old_id FROM key_renames);

DROP TABLE key_renames;
