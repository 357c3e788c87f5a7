-- Generic key/value state of schedulers and change sources; value_json: JSON text.
CREATE TABLE object_state (
    objectname TEXT NOT NULL,
    name TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (objectname, name)
);
