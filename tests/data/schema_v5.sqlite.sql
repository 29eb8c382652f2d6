CREATE TABLE campaign (
	id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	description VARCHAR NOT NULL, 
	settings VARCHAR DEFAULT '{}' NOT NULL, 
	created_at VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);

CREATE TABLE export_cursor (
	target VARCHAR NOT NULL, 
	audit_id INTEGER NOT NULL, 
	updated_at VARCHAR NOT NULL, 
	PRIMARY KEY (target)
);

CREATE TABLE meta (
	"key" VARCHAR NOT NULL, 
	value VARCHAR NOT NULL, 
	PRIMARY KEY ("key")
);

CREATE TABLE request (
	request_id VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	outcome VARCHAR NOT NULL, 
	created_at VARCHAR NOT NULL, 
	PRIMARY KEY (request_id)
);

CREATE TABLE audit (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	ts VARCHAR NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	entity VARCHAR NOT NULL, 
	instance_id INTEGER, 
	job_pk INTEGER, 
	task VARCHAR NOT NULL, 
	run_number INTEGER, 
	jid INTEGER, 
	generation INTEGER, 
	from_status VARCHAR, 
	to_status VARCHAR NOT NULL, 
	actor VARCHAR NOT NULL, 
	identity VARCHAR DEFAULT '' NOT NULL, 
	reason VARCHAR NOT NULL, 
	request_id VARCHAR, 
	detail VARCHAR, 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE INDEX ix_audit_instance ON audit (instance_id);

CREATE TABLE fill_end (
	campaign_id INTEGER NOT NULL, 
	fill INTEGER NOT NULL, 
	ended_at VARCHAR NOT NULL, 
	reason VARCHAR NOT NULL, 
	actor VARCHAR NOT NULL, 
	PRIMARY KEY (campaign_id, fill), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE heartbeat (
	campaign_id INTEGER NOT NULL, 
	task VARCHAR NOT NULL, 
	stage VARCHAR NOT NULL, 
	last_at VARCHAR NOT NULL, 
	actor VARCHAR NOT NULL, 
	ok BOOLEAN NOT NULL, 
	message VARCHAR NOT NULL, 
	PRIMARY KEY (campaign_id, task, stage), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE rtype (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	filter VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (campaign_id, name), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE run (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	run_number INTEGER NOT NULL, 
	fill INTEGER, 
	meta VARCHAR NOT NULL, 
	rtypes VARCHAR NOT NULL, 
	tag_rtypes VARCHAR, 
	injected_at VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (campaign_id, run_number), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE run_source (
	campaign_id INTEGER NOT NULL, 
	source VARCHAR NOT NULL, 
	last_run INTEGER NOT NULL, 
	updated_at VARCHAR NOT NULL, 
	PRIMARY KEY (campaign_id, source), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE task (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	max_retries INTEGER NOT NULL, 
	created_at VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (campaign_id, name), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);

CREATE TABLE rtype_task (
	rtype_id INTEGER NOT NULL, 
	task_id INTEGER NOT NULL, 
	PRIMARY KEY (rtype_id, task_id), 
	FOREIGN KEY(rtype_id) REFERENCES rtype (id), 
	FOREIGN KEY(task_id) REFERENCES task (id)
);

CREATE TABLE task_dep (
	task_id INTEGER NOT NULL, 
	depends_on_id INTEGER NOT NULL, 
	PRIMARY KEY (task_id, depends_on_id), 
	FOREIGN KEY(task_id) REFERENCES task (id), 
	FOREIGN KEY(depends_on_id) REFERENCES task (id)
);

CREATE TABLE task_instance (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	task_id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	status VARCHAR NOT NULL, 
	version INTEGER NOT NULL, 
	generation INTEGER NOT NULL, 
	leader_id INTEGER, 
	outputs VARCHAR NOT NULL, 
	created_at VARCHAR NOT NULL, 
	updated_at VARCHAR NOT NULL, 
	progress_at VARCHAR, 
	PRIMARY KEY (id), 
	UNIQUE (task_id, run_id), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id), 
	FOREIGN KEY(task_id) REFERENCES task (id), 
	FOREIGN KEY(run_id) REFERENCES run (id), 
	FOREIGN KEY(leader_id) REFERENCES task_instance (id)
);

CREATE INDEX ix_ti_campaign_task_status ON task_instance (campaign_id, task_id, status);

CREATE INDEX ix_ti_run ON task_instance (run_id);

CREATE TABLE job (
	id INTEGER NOT NULL, 
	instance_id INTEGER NOT NULL, 
	generation INTEGER NOT NULL, 
	jid INTEGER NOT NULL, 
	status VARCHAR NOT NULL, 
	version INTEGER NOT NULL, 
	attempts INTEGER NOT NULL, 
	batch_id VARCHAR, 
	fields VARCHAR NOT NULL, 
	created_at VARCHAR NOT NULL, 
	updated_at VARCHAR NOT NULL, 
	started_at VARCHAR, 
	finished_at VARCHAR, 
	PRIMARY KEY (id), 
	UNIQUE (instance_id, generation, jid), 
	FOREIGN KEY(instance_id) REFERENCES task_instance (id)
);

CREATE INDEX ix_job_status ON job (status);
