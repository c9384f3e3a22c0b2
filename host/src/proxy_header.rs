//! The PROXY protocol header (v1 text, v2 binary) a load balancer puts before a
//! client's first byte, and whether a peer may send one.
//!
//! It owns the bounds and the verdicts: a header is complete, needs more bytes, or
//! cannot be one, and the last is said as soon as the first bytes show it. Parsing
//! itself is the `ppp` crate's. It never reads a socket and never decides what a
//! refused header costs the connection.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::PartialResult;
use ppp::v1;
use ppp::v2;

/// The longest v1 header, `\r\n` included (the specification's own bound).
pub const V1_MAX: usize = 107;

/// The longest v2 header accepted, its 16 fixed bytes included. The format allows
/// 16 + 65 535; addresses take at most 216 of those and the rest are TLVs (a TLS
/// summary, an AWS VPC endpoint id, a unique id). 4 KiB holds what load balancers
/// send while keeping a connection that only ever sends a header from holding more.
pub const V2_MAX: usize = 4096;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header: read more and parse again (from the first byte). Never
    /// answered for more than [`V1_MAX`] or [`V2_MAX`] bytes.
    Incomplete,
    /// A whole header.
    Header {
        /// Its length: the client's bytes start after it.
        len: usize,
        /// The client's address; `None` when the header says to keep the socket's
        /// peer (v2 `LOCAL`, such as a load balancer's health check; v1 `UNKNOWN`; a
        /// v2 address that is not IP). An IPv4-mapped IPv6 address is given as IPv4.
        source: Option<SocketAddr>,
    },
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first bytes match neither signature.
    #[error("not a PROXY protocol header (the first bytes are neither `PROXY ` nor the v2 signature)")]
    NotProxy,
    /// A v1 header with no `\r\n` within [`V1_MAX`] bytes.
    #[error("PROXY v1 header without an end within {V1_MAX} bytes")]
    V1TooLong,
    /// A v2 header that announces more than [`V2_MAX`] bytes.
    #[error("PROXY v2 header of {0} bytes, more than the {V2_MAX} allowed")]
    V2TooLong(usize),
    /// A malformed header.
    #[error("malformed PROXY v{version} header: {reason}")]
    Malformed {
        /// 1 or 2.
        version: u8,
        /// What `ppp` said.
        reason: String,
    },
}

/// Parses the PROXY header at the start of `bytes`, the first bytes read from a
/// connection. Anything after the header is the client's and is not looked at.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if starts_like(bytes, v2::PROTOCOL_PREFIX) {
        parse_v2(bytes)
    } else if starts_like(bytes, V1_SIGNATURE) {
        parse_v1(bytes)
    } else {
        Err(ProxyHeaderError::NotProxy)
    }
}

/// Whether `bytes` and `signature` agree as far as both go.
fn starts_like(bytes: &[u8], signature: &[u8]) -> bool {
    let common = bytes.len().min(signature.len());
    bytes[..common] == signature[..common]
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if bytes.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let announced = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if announced > V2_MAX {
        return Err(ProxyHeaderError::V2TooLong(announced));
    }
    let result = v2::Header::try_from(bytes);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    let header = result.map_err(|error| ProxyHeaderError::Malformed { version: 2, reason: error.to_string() })?;
    let source = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    Ok(Parsed::Header { len: header.header.len(), source: source.map(canonical) })
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let ends = window.windows(2).any(|pair| pair == b"\r\n");
    if !ends && bytes.len() >= V1_MAX {
        return Err(ProxyHeaderError::V1TooLong);
    }
    let result = v1::Header::try_from(window);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    let header = result.map_err(|error| ProxyHeaderError::Malformed { version: 1, reason: error.to_string() })?;
    let source = match header.addresses {
        v1::Addresses::Tcp4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Tcp6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Header { len: header.header.len(), source: source.map(canonical) })
}

/// One client, one address: `::ffff:192.0.2.1` is 192.0.2.1, as the per-address
/// rules and logs of the host see it.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Whether `peer` (the socket's peer: the load balancer) is one of `from`, the
/// listener's `proxy-protocol` networks. An IPv4-mapped IPv6 peer (a dual-stack
/// socket's view of an IPv4 client) counts as its IPv4 address.
pub fn trusted(peer: IpAddr, from: &[IpNet]) -> bool {
    let canonical = peer.to_canonical();
    from.iter().any(|net| net.contains(&canonical) || net.contains(&peer))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v2_header(command: v2::Command, addresses: impl Into<v2::Addresses>, tlv: Option<&[u8]>) -> Vec<u8> {
        let mut builder = v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses);
        if let Some(value) = tlv {
            builder = builder.write_tlv(v2::Type::Authority, value).unwrap();
        }
        builder.build().unwrap()
    }

    fn addresses(source: &str, destination: &str) -> v2::Addresses {
        (source.parse::<SocketAddr>().unwrap(), destination.parse::<SocketAddr>().unwrap()).into()
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        let mut stream = header.to_vec();
        stream.extend_from_slice(b"\x16\x03\x01 the ClientHello");
        let expected = Parsed::Header { len: header.len(), source: Some("192.0.2.1:56324".parse().unwrap()) };
        assert_eq!(parse(&stream), Ok(expected));

        let header = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n";
        let expected = Parsed::Header { len: header.len(), source: Some("[2001:db8::1]:1234".parse().unwrap()) };
        assert_eq!(parse(header), Ok(expected));

        let header = b"PROXY UNKNOWN\r\nGET /";
        assert_eq!(parse(header), Ok(Parsed::Header { len: 15, source: None }));
    }

    #[test]
    fn v2_proxy_ipv4_ipv6_and_local() {
        let header = v2_header(v2::Command::Proxy, addresses("192.0.2.1:56324", "198.51.100.2:443"), None);
        let mut stream = header.clone();
        stream.extend_from_slice(b"client bytes");
        let expected = Parsed::Header { len: header.len(), source: Some("192.0.2.1:56324".parse().unwrap()) };
        assert_eq!(parse(&stream), Ok(expected));

        let header = v2_header(v2::Command::Proxy, addresses("[2001:db8::1]:1234", "[2001:db8::2]:443"), Some(b"a.example"));
        let expected = Parsed::Header { len: header.len(), source: Some("[2001:db8::1]:1234".parse().unwrap()) };
        assert_eq!(parse(&header), Ok(expected));

        let header = v2_header(v2::Command::Local, v2::Addresses::Unspecified, None);
        assert_eq!(parse(&header), Ok(Parsed::Header { len: 16, source: None }));
        let header = v2_header(v2::Command::Local, addresses("192.0.2.1:1", "192.0.2.2:2"), None);
        assert_eq!(parse(&header), Ok(Parsed::Header { len: header.len(), source: None }));
    }

    #[test]
    fn a_mapped_source_is_given_as_ipv4() {
        let header = v2_header(v2::Command::Proxy, addresses("[::ffff:192.0.2.1]:80", "[2001:db8::2]:443"), None);
        let expected = Parsed::Header { len: header.len(), source: Some("192.0.2.1:80".parse().unwrap()) };
        assert_eq!(parse(&header), Ok(expected));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec();
        let v2 = v2_header(v2::Command::Proxy, addresses("[2001:db8::1]:1234", "[2001:db8::2]:443"), Some(b"tlv"));
        for header in [v1, v2] {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end]), Ok(Parsed::Incomplete), "{:?}", &header[..end]);
            }
        }
    }

    #[test]
    fn garbage_is_refused_at_once() {
        assert_eq!(parse(b"\x16"), Err(ProxyHeaderError::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::NotProxy));
        assert_eq!(parse(b"PROXX"), Err(ProxyHeaderError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyHeaderError::NotProxy));
        assert!(matches!(parse(b"PROXY TCP5 x\r\n"), Err(ProxyHeaderError::Malformed { version: 1, .. })));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"),
            Err(ProxyHeaderError::Malformed { version: 1, .. })
        ));
        assert!(matches!(parse(b"PROXY TCP4 999.0.2.1 1.2.3.4 1 2\r\n"), Err(ProxyHeaderError::Malformed { .. })));
        let mut bad_version = v2_header(v2::Command::Proxy, addresses("192.0.2.1:1", "192.0.2.2:2"), None);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyHeaderError::Malformed { version: 2, .. })));
    }

    #[test]
    fn oversize_headers_are_refused() {
        let mut v1 = b"PROXY UNKNOWN ".to_vec();
        v1.resize(V1_MAX, b'x');
        assert_eq!(parse(&v1[..V1_MAX - 1]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&v1), Err(ProxyHeaderError::V1TooLong));

        let big = vec![b'x'; V2_MAX];
        let v2 = v2_header(v2::Command::Proxy, addresses("192.0.2.1:1", "192.0.2.2:2"), Some(&big));
        assert_eq!(parse(&v2[..V2_FIXED]), Err(ProxyHeaderError::V2TooLong(v2.len())));

        let fits = vec![b'x'; V2_MAX - V2_FIXED - 12 - 3];
        let v2 = v2_header(v2::Command::Proxy, addresses("192.0.2.1:1", "192.0.2.2:2"), Some(&fits));
        assert_eq!(v2.len(), V2_MAX);
        assert!(matches!(parse(&v2), Ok(Parsed::Header { len: V2_MAX, .. })));
    }

    #[test]
    fn trusted_peers_and_mapped_addresses() {
        let from: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(trusted(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), &from));
        assert!(trusted(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), &from));
        assert!(trusted("2001:db8::7".parse().unwrap(), &from));
        assert!(!trusted(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), &from));
        assert!(!trusted(IpAddr::V6(Ipv6Addr::LOCALHOST), &from));
        assert!(!trusted(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), &[]));
    }
}
