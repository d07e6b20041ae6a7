-- IndiMail's tables (indimail.h *_TABLE_LAYOUT), SQLite dialect.
-- Same table and column names as mysql.sql; char(n) keeps its length in the
-- declaration for documentation, SQLite stores TEXT.  Timestamps are UTC.
CREATE TABLE IF NOT EXISTS {indimail} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  pw_uid int, pw_gid int, pw_gecos char(48) not null, pw_dir char(156), pw_shell char(30),
  scram char(255), timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain));
CREATE INDEX IF NOT EXISTS {indimail}_pw_gecos ON {indimail} (pw_gecos);
CREATE INDEX IF NOT EXISTS {indimail}_pw_uid ON {indimail} (pw_uid);
CREATE TABLE IF NOT EXISTS {indibak} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  pw_uid int, pw_gid int, pw_gecos char(48) not null, pw_dir char(156), pw_shell char(30),
  scram char(255), timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain));
CREATE INDEX IF NOT EXISTS {indibak}_pw_gecos ON {indibak} (pw_gecos);
CREATE TABLE IF NOT EXISTS valias (
  alias char(40) not null, domain char(67) not null, valias_line char(190) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  unique (alias, domain, valias_line));
CREATE INDEX IF NOT EXISTS valias_alias ON valias (alias, domain);
CREATE TABLE IF NOT EXISTS lastauth (
  user char(40) not null, domain char(67) not null, service char(10) not null,
  remote_ip char(46) not null, quota int not null, gecos char(48) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (user, domain, service));
CREATE INDEX IF NOT EXISTS lastauth_timestamp ON lastauth (timestamp);
CREATE TABLE IF NOT EXISTS userquota (
  user char(40) not null, domain char(67) not null, quota bigint not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (user, domain));
CREATE TABLE IF NOT EXISTS {relay} (
  email char(96) not null, ipaddr char(46) not null, timestamp int not null,
  unique (email, ipaddr));
CREATE INDEX IF NOT EXISTS {relay}_ipaddr ON {relay} (ipaddr);
CREATE INDEX IF NOT EXISTS {relay}_timestamp ON {relay} (timestamp);
CREATE TABLE IF NOT EXISTS atrn_map (
  pw_name char(40) not null, pw_domain char(67) not null, domain_list char(67) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  unique (pw_name, pw_domain, domain_list));
CREATE TABLE IF NOT EXISTS ip_alias_map (
  ipaddr char(46) not null primary key, domain char(67),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS vlimits (
  domain char(67) not null primary key,
  domain_expiry int not null default -1, passwd_expiry int not null default -1,
  diskquota bigint not null default 0, maxmsgcount bigint not null default 0,
  defaultquota bigint not null default 0, defaultmaxmsgcount bigint not null default 0,
  maxpopaccounts int not null default -1, maxaliases int not null default -1,
  maxforwards int not null default -1, maxautoresponders int not null default -1,
  maxmailinglists int not null default -1,
  disable_pop int not null default 0, disable_imap int not null default 0,
  disable_dialup int not null default 0, disable_passwordchanging int not null default 0,
  disable_webmail int not null default 0, disable_relay int not null default 0,
  disable_smtp int not null default 0,
  perm_account int not null default 0, perm_alias int not null default 0,
  perm_forward int not null default 0, perm_autoresponder int not null default 0,
  perm_maillist int not null default 0, perm_quota int not null default 0,
  perm_defaultquota int not null default 0,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS aliasdomain (
  alias char(64) not null primary key, domain char(67) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS dir_control (
  domain char(67) not null unique, cur_users int, level_cur int, level_max int,
  level_start0 int, level_start1 int, level_start2 int,
  level_end0 int, level_end1 int, level_end2 int,
  level_mod0 int, level_mod1 int, level_mod2 int,
  level_index0 int, level_index1 int, level_index2 int, the_dir char(156),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS {hostcntrl} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  host char(64) not null, timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain));
CREATE TABLE IF NOT EXISTS host_table (
  host char(64) not null primary key, ipaddr char(46) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS dbinfo (
  filename char(128) not null, domain char(64) not null, distributed int not null,
  server char(28) not null, mdahost char(28) not null, port int not null,
  use_ssl int not null default 0, dbname char(28) not null, user char(28) not null,
  passwd char(28) not null, timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  unique (domain, server, mdahost, port, dbname, user, passwd));
CREATE TABLE IF NOT EXISTS smtp_port (
  host char(64) not null, src_host char(64) not null, domain char(64) not null,
  port int not null, timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP,
  primary key (domain, host, src_host));
CREATE TABLE IF NOT EXISTS indimail_tw_schema (
  id int not null primary key, version int not null, flag_encoding int not null);
