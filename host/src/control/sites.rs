//! The addresses that route: where several TLS listeners share a port, or a listener
//! sits behind PROXY-speaking load balancers. For each such address control keeps the
//! [`Site`] every worker reads, opens its port on every worker when its first listener
//! comes and closes it when the last one goes, and builds the site anew whenever one of
//! its listeners comes, goes or changes its TLS, without touching the others.
//!
//! It also loads what a listener's TLS needs from files (its certificate and key, its
//! upstreams' CAs) before the listener is bound. It never accepts or reads a
//! connection: that is the workers' (`reactor/greeting.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::channel;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::{Control, Record};
use crate::listener::{ListenerSpec, Tls};
use crate::reactor::{Command, Handling, SharedSite, Site, Target};
use crate::tls::{ClientTls, Router, ServerTls, TlsError};

/// Which site a listener belongs to: its configured address, and, where that picks a
/// free port (port 0), the listener itself, since nobody can share a port not yet
/// chosen.
pub(super) type SiteKey = (SocketAddr, Option<String>);

/// One routing address as control keeps it.
pub(super) struct SiteEntry {
    /// What the workers read.
    site: SharedSite,
    /// The address its port is bound to.
    bound: SocketAddr,
}

/// What a listener's TLS needs, loaded from its files.
#[derive(Default)]
pub(super) struct Loaded {
    /// The certificate a terminating listener serves.
    pub(super) server: Option<ServerTls>,
    /// The upstreams its handlers dial over TLS.
    pub(super) upstreams: Vec<(SocketAddr, ClientTls)>,
}

/// Whether a listener's connections are routed by a site: it has TLS, or reads a
/// PROXY header.
pub(super) fn routed(spec: &ListenerSpec) -> bool {
    spec.tls.is_some() || !spec.proxy_protocol.is_empty()
}

/// The part of a listener's settings that its TLS and routing are: changing it needs
/// no new version of the plugin.
pub(super) fn tls_part(spec: &ListenerSpec) -> (&Option<Tls>, &Vec<String>, bool, &Vec<ipnet::IpNet>) {
    (&spec.tls, &spec.server_names, spec.default_server, &spec.proxy_protocol)
}

/// `spec` without its TLS and routing settings, to tell whether anything else changed.
pub(super) fn without_tls(spec: &ListenerSpec) -> ListenerSpec {
    ListenerSpec {
        tls: None,
        server_names: Vec::new(),
        default_server: false,
        proxy_protocol: Vec::new(),
        ..spec.clone()
    }
}

/// The site key of `spec`.
pub(super) fn key_of(spec: &ListenerSpec) -> SiteKey {
    let alone = (spec.address.port() == 0).then(|| spec.name.clone());
    (spec.address, alone)
}

/// Read `spec`'s certificate and key, and its TLS upstreams' roots.
pub(super) fn load(spec: &ListenerSpec) -> Result<Loaded, TlsError> {
    let server = match &spec.tls {
        Some(Tls::Terminate(termination)) => Some(ServerTls::load(termination)?),
        _ => None,
    };
    Ok(Loaded { server, upstreams: upstreams(spec)? })
}

/// The upstreams `spec`'s handlers dial over TLS, their roots read.
pub(super) fn upstreams(spec: &ListenerSpec) -> Result<Vec<(SocketAddr, ClientTls)>, TlsError> {
    spec.allow_connect
        .iter()
        .filter_map(|upstream| Some((upstream.address, upstream.tls.as_ref()?)))
        .map(|(address, tls)| Ok((address, ClientTls::load(tls)?)))
        .collect()
}

impl Control {
    /// The bound address of `spec`'s site, its port opened on every worker if it was
    /// not yet.
    pub(super) fn open_site(&self, spec: &ListenerSpec) -> std::io::Result<SocketAddr> {
        let key = key_of(spec);
        if let Some(entry) = self.sites().get(&key) {
            return Ok(entry.bound);
        }
        let site = Site {
            address: spec.address,
            proxy_protocol: spec.proxy_protocol.clone(),
            handshake_timeout: spec.limits.handshake_timeout,
            reads_hello: spec.tls.is_some(),
            router: Router::new(),
        };
        let shared: SharedSite = Arc::new(ArcSwap::from_pointee(site));
        let workers = self.inner.workers.len();
        let mut bound = spec.address;
        for (index, worker) in self.inner.workers.iter().enumerate() {
            let (reply, answer) = channel();
            let command = Command::OpenPort { site: shared.clone(), address: bound, shared_port: workers > 1, reply };
            let opened = if worker.send(command) { answer.recv().ok() } else { None };
            match opened {
                Some(Ok(address)) => bound = address,
                Some(Err(err)) => {
                    self.close_port(bound, index);
                    return Err(err);
                }
                None => {
                    self.close_port(bound, index);
                    return Err(std::io::Error::other("the server is stopping"));
                }
            }
        }
        info!(address = %bound, "routing by server name");
        self.sites().insert(key, SiteEntry { site: shared, bound });
        Ok(bound)
    }

    /// Close the port at `address` on the first `workers` workers.
    fn close_port(&self, address: SocketAddr, workers: usize) {
        let answers: Vec<_> = self.inner.workers[..workers]
            .iter()
            .filter_map(|worker| {
                let (reply, answer) = channel();
                worker.send(Command::ClosePort { address, reply }).then_some(answer)
            })
            .collect();
        for answer in answers {
            let _ = answer.recv();
        }
    }

    /// Build the site of `key` anew from the records of its listeners (all but
    /// `leaving`), and close its port if none is left.
    pub(super) fn rebuild_site(&self, records: &[Record], key: &SiteKey, leaving: Option<&str>) {
        let members: Vec<&Record> = records
            .iter()
            .filter(|r| routed(&r.spec) && key_of(&r.spec) == *key && Some(r.name()) != leaving)
            .collect();
        let mut sites = self.sites();
        let Some(entry) = sites.get(key) else { return };
        if members.is_empty() {
            let bound = entry.bound;
            sites.remove(key);
            drop(sites);
            self.close_port(bound, self.inner.workers.len());
            return;
        }
        let site = site_of(entry.bound, &members);
        entry.site.store(Arc::new(site));
    }

    /// Give listener `spec.name` the TLS settings of `spec` (certificate files, ALPN,
    /// client CA, server names, default, PROXY rule), loaded and checked first: on an
    /// error the old ones keep serving. The other listeners of its address are left
    /// as they are.
    pub(super) fn retarget(&self, spec: &ListenerSpec) -> Result<(), super::ControlError> {
        let loaded = load(spec).map_err(|err| super::ControlError::Tls(spec.name.clone(), err))?;
        let mut records = self.records();
        let record = records.iter_mut().find(|r| r.name() == spec.name);
        let record = record.ok_or_else(|| super::ControlError::UnknownListener(spec.name.clone()))?;
        record.spec = ListenerSpec { allow_connect: record.spec.allow_connect.clone(), ..spec.clone() };
        record.tls = loaded.server;
        self.rebuild_site(&records, &key_of(spec), None);
        info!(listener = %spec.name, "TLS settings changed");
        Ok(())
    }

    /// Read listener `listener`'s certificate and key files again and serve what they
    /// hold now to new handshakes, if it parses, matches its key and is valid; open
    /// connections go on. True if the certificate changed; on an error the old one
    /// keeps serving. A listener that does not end TLS has nothing to reload.
    pub fn reload_certificate(&self, listener: &str) -> Result<bool, super::ControlError> {
        let (spec, server) = self.with_record(listener, |r| (r.spec.clone(), r.tls.clone()))?;
        let (Some(Tls::Terminate(termination)), Some(server)) = (&spec.tls, server) else { return Ok(false) };
        let before = server.certificate();
        match server.reload(termination) {
            Ok(now) if now.sha256 == before.sha256 => Ok(false),
            Ok(now) => {
                info!(listener, certificate = %now, "certificate rotated: new handshakes get the new one");
                Ok(true)
            }
            Err(err) => {
                warn!(listener, "the new certificate is refused, the old one keeps serving: {err}");
                Err(super::ControlError::Tls(listener.to_owned(), err))
            }
        }
    }

    fn sites(&self) -> std::sync::MutexGuard<'_, HashMap<SiteKey, SiteEntry>> {
        self.inner.sites.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The rule of the address bound at `bound`, whose listeners are `members`.
fn site_of(bound: SocketAddr, members: &[&Record]) -> Site {
    let mut router = Router::new();
    let alone = members.len() == 1;
    for record in members {
        let spec = &record.spec;
        let handling = match (&spec.tls, &record.tls) {
            (Some(Tls::Terminate(_)), Some(server)) => Handling::Terminate(server.config().clone()),
            (Some(Tls::Passthrough), _) => Handling::Passthrough,
            (None, _) => Handling::Plain,
            (Some(Tls::Terminate(_)), None) => {
                warn!(listener = %spec.name, "a terminating listener without its certificate loaded: not routed");
                continue;
            }
        };
        let target = Target { listener: spec.name.clone(), workers: record.workers.clone(), handling };
        for name in &spec.server_names {
            router.insert(name, target.clone());
        }
        if spec.default_server || (alone && spec.server_names.is_empty()) {
            router.set_default(target);
        }
    }
    let first = &members[0].spec;
    Site {
        address: bound,
        proxy_protocol: first.proxy_protocol.clone(),
        handshake_timeout: members.iter().map(|r| r.spec.limits.handshake_timeout).min().unwrap_or_default(),
        reads_hello: members.iter().any(|r| r.spec.tls.is_some()),
        router,
    }
}
