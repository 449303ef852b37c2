-- The schema of hl7gw at commit ce29ab1 (the last release before migrations), as its
-- metadata.create_all made it on postgresql. tests/test_db_migrations.py upgrades a database made from it.

CREATE TABLE dead_letter (
	id VARCHAR(36) NOT NULL, 
	envelope_id VARCHAR(64) NOT NULL, 
	sender VARCHAR(512) NOT NULL, 
	control_id VARCHAR(256) NOT NULL, 
	stage VARCHAR(32) NOT NULL, 
	reason TEXT NOT NULL, 
	error_type VARCHAR(128) NOT NULL, 
	attempts INTEGER NOT NULL, 
	created_at BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	raw BYTEA NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_dead_letter_envelope ON dead_letter (envelope_id);

CREATE INDEX ix_dead_letter_status_created ON dead_letter (status, created_at);

CREATE TABLE fhir_resource (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	version_id INTEGER NOT NULL, 
	last_updated TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content_hash VARCHAR(64) NOT NULL, 
	content TEXT, 
	source_time TIMESTAMP WITHOUT TIME ZONE, 
	source_sender VARCHAR(512), 
	source_seq BIGINT, 
	source_message VARCHAR(64), 
	PRIMARY KEY (type, id)
);

CREATE INDEX ix_fhir_resource_updated ON fhir_resource (type, last_updated);

CREATE TABLE fhir_resource_history (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	version_id INTEGER NOT NULL, 
	last_updated TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content TEXT, 
	PRIMARY KEY (type, id, version_id)
);

CREATE INDEX ix_fhir_resource_history_updated ON fhir_resource_history (type, last_updated);

CREATE TABLE fhir_search_date (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	low TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	high TIMESTAMP WITHOUT TIME ZONE NOT NULL
);

CREATE INDEX ix_fhir_search_date_resource ON fhir_search_date (type, id, param, low, high);

CREATE INDEX ix_fhir_search_date_value ON fhir_search_date (type, param, low, high, id);

CREATE TABLE fhir_search_reference (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	target_type VARCHAR(64) NOT NULL, 
	target_id VARCHAR(64) NOT NULL
);

CREATE INDEX ix_fhir_search_reference_resource ON fhir_search_reference (type, id, param);

CREATE INDEX ix_fhir_search_reference_value ON fhir_search_reference (type, param, target_id, target_type, id);

CREATE TABLE fhir_search_string (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	value VARCHAR(256) COLLATE "C" NOT NULL, 
	exact VARCHAR(256) COLLATE "C" NOT NULL
);

CREATE INDEX ix_fhir_search_string_resource ON fhir_search_string (type, id, param);

CREATE INDEX ix_fhir_search_string_value ON fhir_search_string (type, param, value, id);

CREATE TABLE fhir_search_token (
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	system VARCHAR(256) COLLATE "C" NOT NULL, 
	code VARCHAR(256) COLLATE "C" NOT NULL
);

CREATE INDEX ix_fhir_search_token_resource ON fhir_search_token (type, id, param);

CREATE INDEX ix_fhir_search_token_value ON fhir_search_token (type, param, code, system, id);

CREATE TABLE message_archive (
	id VARCHAR(64) NOT NULL, 
	sender VARCHAR(512) NOT NULL, 
	control_id VARCHAR(256) NOT NULL, 
	seq BIGINT NOT NULL, 
	message_type VARCHAR(64) NOT NULL, 
	peer VARCHAR(256) NOT NULL, 
	received_at BIGINT NOT NULL, 
	raw BYTEA NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	updated_at BIGINT NOT NULL, 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_message_archive_sender_control ON message_archive (sender, control_id);

CREATE INDEX ix_message_archive_status ON message_archive (status, received_at);

CREATE TABLE patient_merge (
	old_id VARCHAR(64) NOT NULL, 
	new_id VARCHAR(64) NOT NULL, 
	message_id VARCHAR(64), 
	PRIMARY KEY (old_id)
);

CREATE TABLE resource_provenance (
	message_id VARCHAR(64) NOT NULL, 
	type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	version_id INTEGER NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	superseded_by VARCHAR(64), 
	recorded_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (message_id, type, id, version_id)
);

CREATE INDEX ix_resource_provenance_resource ON resource_provenance (type, id);

CREATE INDEX ix_resource_provenance_superseded ON resource_provenance (recorded_at) WHERE outcome = 'superseded';

CREATE TABLE sink_delivery (
	message_id VARCHAR(64) NOT NULL, 
	sink VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	received_at BIGINT NOT NULL, 
	next_attempt_at BIGINT NOT NULL, 
	updated_at BIGINT NOT NULL, 
	PRIMARY KEY (message_id, sink)
);

CREATE INDEX ix_sink_delivery_status ON sink_delivery (sink, status, received_at);
