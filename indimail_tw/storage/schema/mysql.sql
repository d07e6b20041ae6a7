-- IndiMail's tables (indimail.h *_TABLE_LAYOUT), MySQL/MariaDB dialect.
-- Created only when missing: an existing IndiMail database is used unchanged.
-- {indimail}, {indibak}, {relay}, {hostcntrl} are the table names, which
-- IndiMail lets MYSQL_TABLE, MYSQL_INACTIVE_TABLE, RELAY_TABLE and CNTRL_TABLE override.
CREATE TABLE IF NOT EXISTS {indimail} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  pw_uid int, pw_gid int, pw_gecos char(48) not null, pw_dir char(156), pw_shell char(30),
  scram char(255),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain), index pw_gecos (pw_gecos(25)), index pw_uid (pw_uid));
CREATE TABLE IF NOT EXISTS {indibak} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  pw_uid int, pw_gid int, pw_gecos char(48) not null, pw_dir char(156), pw_shell char(30),
  scram char(255),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain), index pw_gecos (pw_gecos(25)), index pw_uid (pw_uid));
CREATE TABLE IF NOT EXISTS valias (
  alias char(40) not null, domain char(67) not null, valias_line char(190) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  unique index (alias, domain, valias_line), index (alias, domain));
CREATE TABLE IF NOT EXISTS lastauth (
  user char(40) not null, domain char(67) not null, service char(10) not null,
  remote_ip char(46) not null, quota int not null, gecos char(48) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (user, domain, service), index gecos (gecos), index quota (quota),
  index timestamp (timestamp));
CREATE TABLE IF NOT EXISTS userquota (
  user char(40) not null, domain char(67) not null, quota bigint unsigned not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (user, domain));
CREATE TABLE IF NOT EXISTS {relay} (
  email char(96) not null, ipaddr char(46) not null, timestamp int not null,
  unique index (email, ipaddr), index (ipaddr), index (timestamp));
CREATE TABLE IF NOT EXISTS atrn_map (
  pw_name char(40) not null, pw_domain char(67) not null, domain_list char(67) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  unique index atrnmap (pw_name, pw_domain, domain_list));
CREATE TABLE IF NOT EXISTS ip_alias_map (
  ipaddr char(46) not null, domain char(67),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (ipaddr));
CREATE TABLE IF NOT EXISTS vlimits (
  domain CHAR(67) PRIMARY KEY NOT NULL,
  domain_expiry INT(10) NOT NULL DEFAULT -1, passwd_expiry INT(10) NOT NULL DEFAULT -1,
  diskquota BIGINT UNSIGNED NOT NULL DEFAULT 0, maxmsgcount BIGINT UNSIGNED NOT NULL DEFAULT 0,
  defaultquota BIGINT NOT NULL DEFAULT 0, defaultmaxmsgcount BIGINT UNSIGNED NOT NULL DEFAULT 0,
  maxpopaccounts INT(10) NOT NULL DEFAULT -1, maxaliases INT(10) NOT NULL DEFAULT -1,
  maxforwards INT(10) NOT NULL DEFAULT -1, maxautoresponders INT(10) NOT NULL DEFAULT -1,
  maxmailinglists INT(10) NOT NULL DEFAULT -1,
  disable_pop TINYINT(1) NOT NULL DEFAULT 0, disable_imap TINYINT(1) NOT NULL DEFAULT 0,
  disable_dialup TINYINT(1) NOT NULL DEFAULT 0,
  disable_passwordchanging TINYINT(1) NOT NULL DEFAULT 0,
  disable_webmail TINYINT(1) NOT NULL DEFAULT 0, disable_relay TINYINT(1) NOT NULL DEFAULT 0,
  disable_smtp TINYINT(1) NOT NULL DEFAULT 0,
  perm_account TINYINT(2) NOT NULL DEFAULT 0, perm_alias TINYINT(2) NOT NULL DEFAULT 0,
  perm_forward TINYINT(2) NOT NULL DEFAULT 0, perm_autoresponder TINYINT(2) NOT NULL DEFAULT 0,
  perm_maillist TINYINT(4) NOT NULL DEFAULT 0, perm_quota TINYINT(2) NOT NULL DEFAULT 0,
  perm_defaultquota TINYINT(2) NOT NULL DEFAULT 0,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS aliasdomain (
  alias char(64) not null, domain char(67) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (alias));
CREATE TABLE IF NOT EXISTS dir_control (
  domain char(67) not null, cur_users int, level_cur int, level_max int,
  level_start0 int, level_start1 int, level_start2 int,
  level_end0 int, level_end1 int, level_end2 int,
  level_mod0 int, level_mod1 int, level_mod2 int,
  level_index0 int, level_index1 int, level_index2 int, the_dir char(156),
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  unique index (domain));
CREATE TABLE IF NOT EXISTS {hostcntrl} (
  pw_name char(40) not null, pw_domain char(67) not null, pw_passwd char(128) not null,
  host char(64) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (pw_name, pw_domain));
CREATE TABLE IF NOT EXISTS host_table (
  host char(64) not null, ipaddr char(46) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (host), index ipaddr (ipaddr));
CREATE TABLE IF NOT EXISTS dbinfo (
  filename char(128) not null, domain char(64) not null, distributed int not null,
  server char(28) not null, mdahost char(28) not null, port int not null,
  use_ssl int not null default 0, dbname char(28) not null, user char(28) not null,
  passwd char(28) not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  unique index (domain, server, mdahost, port, dbname, user, passwd), index (domain));
CREATE TABLE IF NOT EXISTS smtp_port (
  host char(64) not null, src_host char(64) not null, domain char(64) not null,
  port int not null,
  timestamp TIMESTAMP not null DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  primary key (domain, host, src_host));
CREATE TABLE IF NOT EXISTS indimail_tw_schema (
  id int not null primary key, version int not null, flag_encoding int not null);
