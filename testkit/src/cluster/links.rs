//! The relays one master reaches the database and the gateway through, when
//! the spec asks for them, and the URL surgery that points it at them.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::relay::Relay;

/// The relays one master reaches the cluster through (kept across its restarts).
#[derive(Debug)]
pub struct MasterLinks {
    /// Between the master and the database.
    pub db: Relay,
    /// Between the master and the gateway.
    pub gateway: Relay,
}

impl MasterLinks {
    /// Relays for master `name` to the database of `db_url` and to `gateway`.
    pub fn start(name: &str, db_url: &str, gateway: SocketAddr) -> MasterLinks {
        MasterLinks {
            db: Relay::start(&format!("{name}-db"), address_of(db_url)),
            gateway: Relay::start(&format!("{name}-gateway"), gateway),
        }
    }

    /// The environment that points a master at these relays instead of
    /// what the cluster file names.
    pub fn master_env(&self, db_url: &str) -> Vec<(String, String)> {
        vec![
            (
                "FLOTILLA_DATABASE__URL".to_owned(),
                with_address(db_url, &self.db.addr()),
            ),
            (
                "FLOTILLA_GATEWAY__URLS".to_owned(),
                format!("[\"http://{}\"]", self.gateway.addr()),
            ),
        ]
    }
}

/// `host:port` of a `mysql://user@host:port/db` URL, resolved.
pub fn address_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:3306")
    };
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve the database address in {url}"))
}

/// `url` with its `host:port` replaced by `addr`.
pub fn with_address(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let (user, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let tail = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    format!("{scheme}://{user}{addr}{tail}")
}

#[cfg(test)]
mod tests {
    use super::with_address;

    #[test]
    fn a_url_keeps_its_user_and_database_when_readdressed() {
        assert_eq!(
            with_address("mysql://root@127.0.0.1:3306/db?x=1", "127.0.0.1:9"),
            "mysql://root@127.0.0.1:9/db?x=1"
        );
    }
}
