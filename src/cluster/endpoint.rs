//! Where Herald's Redis is, in the forms production runs it (issue: Redis as users run it):
//!
//! - `redis://[user:password@]host:port[/db]`: one Redis; `rediss://` for TLS. An ACL user and
//!   password go in the URL (percent-encoded). `redis.tls_ca_file` names a private CA;
//!   `redis.tls_verify = false` skips certificate checks (tests only).
//! - `redis+sentinel://[user:password@]host1:port1,host2:port2/<master name>[/db]`: Sentinel.
//!   The user and password are the master's; the sentinels are asked, in turn, where the master
//!   of `<master name>` is, each time a connection is made, so that after a failover every
//!   reconnection goes to the promoted replica. `rediss+sentinel://` reaches the master over TLS
//!   (the sentinels are asked without TLS and without password).
//! - `redis+cluster://[user:password@]host1:port1,host2:port2`: a Redis Cluster (Redis ≥ 7), by
//!   seed nodes; `rediss+cluster://` for TLS. Every key Herald writes carries the hash tag
//!   `{herald}` ([`super::keys`]), so all of them live in one slot; each time a connection is
//!   made, the seeds are asked in turn (`CLUSTER SLOTS`) which master serves that slot now, and
//!   Herald's commands and subscriptions go there. After a failover (that master dies, the
//!   cluster promotes its replica) the next connection goes to the promoted one. Backends keep
//!   publishing with plain `PUBLISH` on any node: a cluster forwards it to every node, so the
//!   subscription on Herald's master sees it.
//!
//! Every Redis connection Herald makes comes from here: the adapter and relay's pub/sub
//! connection and its publisher (`driver.rs`), the store, and the bookkeeping (`gated.rs`).

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::configuration::RedisSettings;

#[derive(Debug, Clone)]
pub struct Endpoint {
    kind: Kind,
    /// The private CA's PEM, for TLS.
    ca: Option<Vec<u8>>,
    verify: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Direct(ConnectionInfo),
    Sentinel { sentinels: Vec<(String, u16)>, master: String, redis: RedisConnectionInfo, tls: bool },
    Cluster { seeds: Vec<(String, u16)>, redis: RedisConnectionInfo, tls: bool },
}

impl Endpoint {
    pub fn from_settings(settings: &RedisSettings) -> Result<Endpoint, String> {
        let ca = match settings.tls_ca_file.as_str() {
            "" => None,
            path => Some(std::fs::read(path).map_err(|e| format!("redis.tls_ca_file {path}: {e}"))?),
        };
        let url = settings.url.as_str();
        let kind = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            sentinel(rest, false)?
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            sentinel(rest, true)?
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            cluster(rest, false)?
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            cluster(rest, true)?
        } else {
            let info = url.into_connection_info().map_err(|e| format!("redis.url: {e}"))?;
            Kind::Direct(info)
        };
        let endpoint = Endpoint { kind, ca, verify: settings.tls_verify };
        endpoint.direct_client_check()?;
        Ok(endpoint)
    }

    /// Fails early on a URL redis-rs cannot use (e.g. TLS options it refuses).
    fn direct_client_check(&self) -> Result<(), String> {
        if let Kind::Direct(info) = &self.kind {
            self.client_for(info.clone()).map_err(|e| format!("redis.url: {e}"))?;
        }
        Ok(())
    }

    /// The client of a URL endpoint (no I/O); `None` for Sentinel.
    pub fn direct_client(&self) -> Option<redis::RedisResult<redis::Client>> {
        match &self.kind {
            Kind::Direct(info) => Some(self.client_for(info.clone())),
            Kind::Sentinel { .. } | Kind::Cluster { .. } => None,
        }
    }

    /// Whether where Redis is can change while Herald runs (Sentinel, Cluster): then every
    /// new connection asks again, and connections are made again after an outage.
    pub fn rediscovers(&self) -> bool {
        !matches!(self.kind, Kind::Direct(_))
    }

    /// A Redis Cluster: Herald's keys take the hash-tagged form (see [`super::keys`]).
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// Where it is, for logs and `/health`: addresses only, never a password.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Direct(info) => info.addr().to_string(),
            Kind::Sentinel { sentinels, master, .. } => {
                let list: Vec<String> = sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("sentinel {} master {master}", list.join(","))
            }
            Kind::Cluster { seeds, .. } => {
                let list: Vec<String> = seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("cluster {}", list.join(","))
            }
        }
    }

    fn client_for(&self, mut info: ConnectionInfo) -> redis::RedisResult<redis::Client> {
        if !self.verify {
            if let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() {
                info = info.set_addr(ConnectionAddr::TcpTls { host, port, insecure: true, tls_params: None });
            }
        }
        match (&self.ca, info.addr()) {
            (Some(ca), ConnectionAddr::TcpTls { .. }) if self.verify => {
                redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) })
            }
            _ => redis::Client::open(info),
        }
    }

    /// A client for Redis now: the URL's, or the master the sentinels name at this moment.
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.kind {
            Kind::Direct(info) => self.client_for(info.clone()),
            Kind::Sentinel { sentinels, master, redis: redis_info, tls } => {
                let mut last = None;
                for (host, port) in sentinels {
                    match ask_sentinel(host, *port, master).await {
                        Ok((master_host, master_port)) => {
                            let addr = if *tls {
                                ConnectionAddr::TcpTls { host: master_host, port: master_port, insecure: false, tls_params: None }
                            } else {
                                ConnectionAddr::Tcp(master_host, master_port)
                            };
                            let info = addr.into_connection_info()?.set_redis_settings(redis_info.clone());
                            return self.client_for(info);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no sentinel configured"))))
            }
            Kind::Cluster { seeds, redis: redis_info, tls } => {
                let mut last = None;
                for (host, port) in seeds {
                    let seed = self.address(host.clone(), *port, *tls).into_connection_info()?.set_redis_settings(redis_info.clone());
                    match ask_cluster(self.client_for(seed)?).await {
                        Ok((master_host, master_port)) => {
                            let master_host = if master_host.is_empty() { host.clone() } else { master_host };
                            let info = self.address(master_host, master_port, *tls).into_connection_info()?.set_redis_settings(redis_info.clone());
                            return self.client_for(info);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no cluster node configured"))))
            }
        }
    }

    fn address(&self, host: String, port: u16, tls: bool) -> ConnectionAddr {
        if tls {
            ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(host, port)
        }
    }
}

/// Asks one cluster node which master serves the slot of Herald's keys now (`CLUSTER KEYSLOT`,
/// `CLUSTER SLOTS`), with a short timeout. An empty host means the node asked.
async fn ask_cluster(client: redis::Client) -> redis::RedisResult<(String, u16)> {
    let timeout = std::time::Duration::from_millis(500);
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let tag = super::keys::redis_key!("").trim_end_matches(':').to_string();
    let (slot, ranges): (i64, Vec<redis::Value>) =
        redis::pipe().cmd("CLUSTER").arg("KEYSLOT").arg(&tag).cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
    for range in ranges {
        let redis::Value::Array(parts) = range else { continue };
        let (Some(start), Some(end), Some(master)) = (parts.first(), parts.get(1), parts.get(2)) else { continue };
        let (start, end): (i64, i64) = (redis::from_redis_value(start.clone())?, redis::from_redis_value(end.clone())?);
        if (start..=end).contains(&slot) {
            let redis::Value::Array(master) = master else { break };
            if let (Some(host), Some(port)) = (master.first(), master.get(1)) {
                return Ok((redis::from_redis_value(host.clone())?, redis::from_redis_value(port.clone())?));
            }
        }
    }
    Err(redis::RedisError::from((redis::ErrorKind::Io, "no master serves Herald's slot (the cluster is failing over or incomplete)")))
}

/// `SENTINEL get-master-addr-by-name <master>` on one sentinel, with a short timeout.
async fn ask_sentinel(host: &str, port: u16, master: &str) -> redis::RedisResult<(String, u16)> {
    let client = redis::Client::open(ConnectionAddr::Tcp(host.to_string(), port))?;
    let timeout = std::time::Duration::from_millis(500);
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let answer: Option<(String, u16)> = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query_async(&mut conn).await?;
    answer.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "sentinel does not know this master", master.to_string())))
}

/// `[user:password@]h1:p1,h2:p2/<master>[/db]` (after the scheme).
fn sentinel(rest: &str, tls: bool) -> Result<Kind, String> {
    const FORM: &str = "redis.url: expected redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db]";
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or(FORM)?;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let master = segments.next().ok_or(FORM)?.to_string();
    let db: i64 = match segments.next() {
        None => 0,
        Some(db) => db.parse().map_err(|_| format!("{FORM}: {db:?} is not a database number"))?,
    };
    let sentinels = host_list(hosts, FORM)?;
    let redis = credentials_info(credentials, db);
    Ok(Kind::Sentinel { sentinels, master, redis, tls })
}

/// `[user:password@]h1:p1,h2:p2[/]` (after the scheme).
fn cluster(rest: &str, tls: bool) -> Result<Kind, String> {
    const FORM: &str = "redis.url: expected redis+cluster://[user:password@]host:port[,host:port...]";
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') {
        return Err(format!("{FORM}: a cluster has no database number"));
    }
    let seeds = host_list(hosts, FORM)?;
    Ok(Kind::Cluster { seeds, redis: credentials_info(credentials, 0), tls })
}

fn host_list(hosts: &str, form: &str) -> Result<Vec<(String, u16)>, String> {
    let mut list = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (name, port) = host.rsplit_once(':').ok_or_else(|| format!("{form}: {host:?} has no port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{form}: {host:?} has a bad port"))?;
        list.push((name.trim_start_matches('[').trim_end_matches(']').to_string(), port));
    }
    if list.is_empty() {
        return Err(form.into());
    }
    Ok(list)
}

fn credentials_info(credentials: Option<&str>, db: i64) -> RedisConnectionInfo {
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(credentials) = credentials {
        match credentials.split_once(':') {
            Some((user, password)) => {
                if !user.is_empty() {
                    redis = redis.set_username(percent_decode(user));
                }
                redis = redis.set_password(percent_decode(password));
            }
            None => redis = redis.set_username(percent_decode(credentials)),
        }
    }
    redis
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings { url: url.into(), ..RedisSettings::default() }
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_credentials() {
        let endpoint = Endpoint::from_settings(&settings("redis+sentinel://herald:p%40ss@127.0.0.1:26379,[::1]:26380/mymaster/2")).unwrap();
        let Kind::Sentinel { sentinels, master, redis, tls } = &endpoint.kind else { panic!("{endpoint:?}") };
        assert_eq!(sentinels, &vec![("127.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]);
        assert_eq!(master, "mymaster");
        assert_eq!((redis.username(), redis.password(), redis.db()), (Some("herald"), Some("p@ss"), 2));
        assert!(!tls);
        assert_eq!(endpoint.describe(), "sentinel 127.0.0.1:26379,::1:26380 master mymaster");
        assert!(!endpoint.describe().contains("p@ss"));
    }

    #[test]
    fn bad_urls_say_what_form_is_expected() {
        for url in ["redis+sentinel://127.0.0.1:26379", "redis+sentinel:///m", "redis+sentinel://host/m", "redis+sentinel://h:1/m/x", "nope://x"] {
            let error = Endpoint::from_settings(&settings(url)).unwrap_err();
            assert!(error.starts_with("redis.url"), "{url}: {error}");
        }
    }

    #[test]
    fn a_cluster_url_names_the_seeds_and_the_credentials() {
        let endpoint = Endpoint::from_settings(&settings("redis+cluster://:secret@127.0.0.1:7000,127.0.0.1:7001/")).unwrap();
        let Kind::Cluster { seeds, redis, tls } = &endpoint.kind else { panic!("{endpoint:?}") };
        assert_eq!(seeds, &vec![("127.0.0.1".to_string(), 7000), ("127.0.0.1".to_string(), 7001)]);
        assert_eq!((redis.username(), redis.password()), (None, Some("secret")));
        assert!(!tls && endpoint.is_cluster() && endpoint.rediscovers());
        assert_eq!(endpoint.describe(), "cluster 127.0.0.1:7000,127.0.0.1:7001");
        for url in ["redis+cluster://", "redis+cluster://h:1/0", "redis+cluster://h"] {
            let error = Endpoint::from_settings(&settings(url)).unwrap_err();
            assert!(error.starts_with("redis.url: expected redis+cluster://"), "{url}: {error}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let error = Endpoint::from_settings(&RedisSettings { tls_ca_file: "/nonexistent/ca.pem".into(), ..settings("rediss://127.0.0.1:6380") })
            .unwrap_err();
        assert!(error.contains("redis.tls_ca_file /nonexistent/ca.pem"), "{error}");
    }
}
