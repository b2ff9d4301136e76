//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load balancer sends before
//! the client's first byte, naming the client's address.
//!
//! The parser is told the bytes read so far and answers how many more it needs, so that the
//! adapter reads exactly the header and not one byte of what follows (with implicit TLS the
//! ClientHello may arrive in the same segment).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest version 2 header accepted (16-byte preamble and addresses, with room for TLVs).
pub const V2_MAX: usize = 16 + 512;
/// Bytes to read before the first call: the shortest header (`PROXY UNKNOWN\r\n`).
pub const MIN_LEN: usize = 15;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was relayed for the client at this address.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy speaks for itself (health checks) or the protocol is not TCP: use the
    /// connection's own addresses.
    Local,
}

/// What the parser needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Read exactly this many more bytes, then call again with all of them.
    NeedMore(usize),
    /// The header is the first `length` bytes.
    Done { header: ProxyHeader, length: usize },
}

/// Bytes that are not a valid header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header")]
    BadV1,
    #[error("malformed PROXY protocol v2 header")]
    BadV2,
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
}

/// Parses the start of a connection.
pub fn parse(input: &[u8]) -> Result<Parse, ProxyError> {
    if input.len() < MIN_LEN {
        return Ok(Parse::NeedMore(MIN_LEN - input.len()));
    }
    if input.starts_with(&V2_SIGNATURE) {
        parse_v2(input)
    } else if input.starts_with(b"PROXY ") {
        parse_v1(input)
    } else {
        Err(ProxyError::Missing)
    }
}

fn parse_v1(input: &[u8]) -> Result<Parse, ProxyError> {
    let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
        if input.len() >= V1_MAX {
            return Err(ProxyError::TooLong(V1_MAX));
        }
        if input.contains(&b'\n') || input[..input.len() - 1].contains(&b'\r') {
            return Err(ProxyError::BadV1);
        }
        return Ok(Parse::NeedMore(1));
    };
    let length = end + 2;
    if length > V1_MAX {
        return Err(ProxyError::TooLong(V1_MAX));
    }
    let line = std::str::from_utf8(&input[6..end]).map_err(|_| ProxyError::BadV1)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader::Local,
        [
            family @ ("TCP4" | "TCP6"),
            source,
            destination,
            source_port,
            destination_port,
        ] => {
            let source: IpAddr = source.parse().map_err(|_| ProxyError::BadV1)?;
            let destination: IpAddr = destination.parse().map_err(|_| ProxyError::BadV1)?;
            let v4 = *family == "TCP4";
            if source.is_ipv4() != v4 || destination.is_ipv4() != v4 {
                return Err(ProxyError::BadV1);
            }
            ProxyHeader::Proxied {
                source: SocketAddr::new(source, port(source_port)?),
                destination: SocketAddr::new(destination, port(destination_port)?),
            }
        }
        _ => return Err(ProxyError::BadV1),
    };
    Ok(Parse::Done { header, length })
}

/// A decimal port without sign or leading zeros.
fn port(text: &str) -> Result<u16, ProxyError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(ProxyError::BadV1);
    }
    text.parse().map_err(|_| ProxyError::BadV1)
}

fn parse_v2(input: &[u8]) -> Result<Parse, ProxyError> {
    if input.len() < 16 {
        return Ok(Parse::NeedMore(16 - input.len()));
    }
    let version_command = input[12];
    let family = input[13];
    let body = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let length = 16 + body;
    if length > V2_MAX {
        return Err(ProxyError::TooLong(V2_MAX));
    }
    if input.len() < length {
        return Ok(Parse::NeedMore(length - input.len()));
    }
    let addresses = &input[16..length];
    let header = match version_command {
        0x20 => ProxyHeader::Local,
        0x21 => match family {
            // TCP over IPv4.
            0x11 if addresses.len() >= 12 => {
                let ip = |at: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        addresses[at],
                        addresses[at + 1],
                        addresses[at + 2],
                        addresses[at + 3],
                    ))
                };
                ProxyHeader::Proxied {
                    source: SocketAddr::new(ip(0), be16(addresses, 8)),
                    destination: SocketAddr::new(ip(4), be16(addresses, 10)),
                }
            }
            // TCP over IPv6.
            0x21 if addresses.len() >= 36 => {
                let ip = |at: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&addresses[at..at + 16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                ProxyHeader::Proxied {
                    source: SocketAddr::new(ip(0), be16(addresses, 32)),
                    destination: SocketAddr::new(ip(16), be16(addresses, 34)),
                }
            }
            // UNSPEC, UDP and UNIX sockets: nothing Postern can use.
            0x00 | 0x12 | 0x22 | 0x31 | 0x32 => ProxyHeader::Local,
            _ => return Err(ProxyError::BadV2),
        },
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Parse::Done { header, length })
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The version 1 header for `source` → `destination` (used by tests and tools).
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// The version 2 header for `source` → `destination` (used by tests and tools).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    let mut addresses = Vec::new();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            addresses.extend(s.octets());
            addresses.extend(d.octets());
        }
        (s, d) => {
            out.push(0x21);
            addresses.extend(to_v6(s).octets());
            addresses.extend(to_v6(d).octets());
        }
    }
    addresses.extend(source.port().to_be_bytes());
    addresses.extend(destination.port().to_be_bytes());
    out.extend((addresses.len() as u16).to_be_bytes());
    out.extend(addresses);
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Feeds `input` the way the adapter does: exactly what the parser asks for.
    fn read_like_adapter(input: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
        let mut have = MIN_LEN.min(input.len());
        loop {
            match parse(&input[..have])? {
                Parse::Done { header, length } => return Ok((header, length)),
                Parse::NeedMore(n) => {
                    assert!(have + n <= input.len(), "asked past the input");
                    have += n;
                }
            }
        }
    }

    #[test]
    fn version_1() {
        let input = b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 25\r\nEHLO x\r\n";
        let (header, length) = read_like_adapter(input).unwrap();
        assert_eq!(length, input.len() - b"EHLO x\r\n".len());
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("192.0.2.7:51234"),
                destination: addr("10.0.0.5:25")
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 587\r\n";
        assert!(
            matches!(read_like_adapter(v6).unwrap().0, ProxyHeader::Proxied { source, .. } if source == addr("[2001:db8::1]:4000"))
        );
        assert_eq!(
            read_like_adapter(b"PROXY UNKNOWN\r\n").unwrap(),
            (ProxyHeader::Local, 15)
        );
        assert_eq!(
            read_like_adapter(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                .unwrap()
                .0,
            ProxyHeader::Local
        );
    }

    #[test]
    fn version_1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.5 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 051234 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 65536 25\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.5 1 25\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.5 1 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 1 25\n\r\n",
        ] {
            assert!(
                read_like_adapter(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(read_like_adapter(&long), Err(ProxyError::TooLong(V1_MAX)));
        assert_eq!(parse(b"EHLO client.example\r\n"), Err(ProxyError::Missing));
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcd"),
            Err(ProxyError::Missing)
        );
    }

    #[test]
    fn version_2() {
        let source = addr("198.51.100.20:40000");
        let destination = addr("10.1.1.1:465");
        let mut input = v2_header(source, destination);
        let header_length = input.len();
        input.extend(b"\x16\x03\x01 client hello follows");
        let (header, length) = read_like_adapter(&input).unwrap();
        assert_eq!(length, header_length);
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source,
                destination
            }
        );

        let source = addr("[2001:db8::7]:1234");
        let input = v2_header(source, addr("[2001:db8::1]:25"));
        assert!(
            matches!(read_like_adapter(&input).unwrap().0, ProxyHeader::Proxied { source: s, .. } if s == source)
        );

        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        assert_eq!(read_like_adapter(&local).unwrap(), (ProxyHeader::Local, 16));
    }

    #[test]
    fn version_2_refusals() {
        let good = v2_header(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        assert_eq!(read_like_adapter(&bad_version), Err(ProxyError::BadV2));
        let mut short_addresses = good.clone();
        short_addresses[15] = 4;
        short_addresses.truncate(20);
        assert_eq!(read_like_adapter(&short_addresses), Err(ProxyError::BadV2));
        let mut huge = good;
        huge[14] = 0xff;
        assert_eq!(parse(&huge), Err(ProxyError::TooLong(V2_MAX)));
    }
}
