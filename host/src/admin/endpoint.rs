//! Where the admin API (or its health checks) listens, and what a connection to it is
//! once accepted: a TCP address in plain HTTP, the same in HTTPS with a certificate of
//! the API's own, or a Unix socket that only its owner may open.
//!
//! It owns binding, the socket file (made mode 0600 before anyone can reach it, and
//! removed when the endpoint is dropped) and the TLS handshake. It never looks at a
//! request: what one means is the router's, how many are held at once is
//! [`connections`](super::connections)'s.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;

use crate::config::AdminListen;
use crate::listener::Termination;
use crate::tls::ServerTls;

/// A bound admin endpoint: create it inside the admin runtime's context.
pub enum Endpoint {
    /// Plain HTTP over TCP.
    Tcp(TcpListener),
    /// HTTPS over TCP, with the handshake's configuration.
    Tls(TcpListener, TlsAcceptor),
    /// Plain HTTP over a Unix socket, and the socket file to remove when done.
    Unix(UnixListener, PathBuf),
}

/// What a connection's bytes go through, once its handshake (if any) is done.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A connection just accepted: its TLS handshake, if any, is still to be made, off
/// the accept loop.
pub enum Accepted {
    /// Plain HTTP over TCP.
    Tcp(TcpStream),
    /// HTTPS: the handshake is next.
    Tls(TcpStream, TlsAcceptor),
    /// Plain HTTP over a Unix socket.
    Unix(UnixStream),
}

impl Endpoint {
    /// A plain TCP endpoint on `address`.
    pub fn tcp(address: SocketAddr) -> io::Result<Endpoint> {
        Ok(Endpoint::Tcp(bind_tcp(address)?))
    }

    /// Bind `listen`; `tls` is the HTTPS configuration for a TCP address that has one.
    pub fn bind(listen: &AdminListen, tls: Option<&ServerTls>) -> io::Result<Endpoint> {
        match (listen, tls) {
            (AdminListen::Tcp { address, .. }, None) => Endpoint::tcp(*address),
            (AdminListen::Tcp { address, .. }, Some(tls)) => {
                Ok(Endpoint::Tls(bind_tcp(*address)?, TlsAcceptor::from(Arc::clone(tls.config()))))
            }
            (AdminListen::Unix(path), _) => Ok(Endpoint::Unix(bind_unix(path)?, path.clone())),
        }
    }

    /// What it is bound to, as a client would name it: `IP:PORT` (with the port it
    /// got), `https://IP:PORT` or `unix:/path`.
    pub fn describe(&self) -> io::Result<String> {
        Ok(match self {
            Endpoint::Tcp(listener) => listener.local_addr()?.to_string(),
            Endpoint::Tls(listener, _) => format!("https://{}", listener.local_addr()?),
            Endpoint::Unix(_, path) => format!("unix:{}", path.display()),
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Accepted> {
        Ok(match self {
            Endpoint::Tcp(listener) => Accepted::Tcp(listener.accept().await?.0),
            Endpoint::Tls(listener, acceptor) => Accepted::Tls(listener.accept().await?.0, acceptor.clone()),
            Endpoint::Unix(listener, _) => Accepted::Unix(listener.accept().await?.0),
        })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Endpoint::Unix(_, path) = self {
            // Gone already (removed by hand) is as good as removed.
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Accepted {
    /// The connection ready for HTTP: after the TLS handshake, for HTTPS.
    pub async fn open(self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            Accepted::Tcp(stream) => Box::new(stream),
            Accepted::Tls(stream, acceptor) => Box::new(acceptor.accept(stream).await?),
            Accepted::Unix(stream) => Box::new(stream),
        })
    }
}

/// The admin API's HTTPS configuration: its own certificate and key, HTTP/1.1 by ALPN.
pub fn server_tls(certificate: &Path, key: &Path) -> Result<(ServerTls, Termination), crate::tls::TlsError> {
    let termination = Termination {
        certificate: certificate.to_owned(),
        key: key.to_owned(),
        alpn: vec!["http/1.1".into()],
        client_auth: None,
    };
    Ok((ServerTls::load(&termination)?, termination))
}

fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Bind a Unix socket at `path`, mode 0600 from the moment it has that name: it is
/// bound under a name of its own in the same folder, made 0600, then renamed into
/// place. A socket left behind by a server that is gone (nobody answers on it) is
/// replaced; one that answers, or a file that is not a socket, is an error.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way"));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(io::Error::new(io::ErrorKind::AddrInUse, "a server answers on that socket")),
            Err(_) => std::fs::remove_file(path)?,
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut private = name.to_owned();
    private.push(format!(".{}.binding", std::process::id()));
    let private = path.with_file_name(private);
    let _ = std::fs::remove_file(&private);
    let listener = std::os::unix::net::UnixListener::bind(&private)?;
    let placed = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&private, path));
    if let Err(err) = placed {
        let _ = std::fs::remove_file(&private);
        return Err(err);
    }
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}
