-- The log tables are insert-only, for every role: UPDATE, DELETE and TRUNCATE raise.
CREATE FUNCTION refuse_log_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
