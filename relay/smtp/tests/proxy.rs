//! Property tests of the PROXY protocol parser, which reads bytes from anyone who connects to a
//! proxy listener.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use postern_smtp::proxy::{
    MIN_LEN, Parse, ProxyHeader, V1_MAX, V2_MAX, parse, v1_header, v2_header,
};
use proptest::prelude::*;

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Reads `input` the way the adapter does; `None` when the parser asks for more than there is.
fn read_all(input: &[u8]) -> Option<Result<(ProxyHeader, usize), postern_smtp::proxy::ProxyError>> {
    let mut have = MIN_LEN;
    loop {
        if have > input.len() {
            return None;
        }
        match parse(&input[..have]) {
            Err(err) => return Some(Err(err)),
            Ok(Parse::Done { header, length }) => return Some(Ok((header, length))),
            Ok(Parse::NeedMore(n)) => {
                assert!(n >= 1);
                have += n;
                assert!(have <= V1_MAX.max(V2_MAX), "asked for {have} bytes");
            }
        }
    }
}

proptest! {
    #[test]
    fn never_panics_and_never_asks_beyond_the_limits(input in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = parse(&input);
        if let Some(Ok((_, length))) = read_all(&input) {
            prop_assert!(length <= input.len());
        }
    }

    #[test]
    fn headers_round_trip(source in address(), destination in address(), rest in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Version 1 carries one family for both ends.
        let destination_v1 = match (source.ip(), destination.ip()) {
            (IpAddr::V4(_), IpAddr::V6(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), destination.port()),
            (IpAddr::V6(_), IpAddr::V4(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), destination.port()),
            _ => destination,
        };
        let header = v1_header(source, destination_v1);
        let input = [header.clone(), rest.clone()].concat();
        let (parsed, length) = read_all(&input).unwrap().unwrap();
        prop_assert_eq!(length, header.len());
        prop_assert_eq!(parsed, ProxyHeader::Proxied { source, destination: destination_v1 });

        if source.is_ipv4() == destination.is_ipv4() {
            let header = v2_header(source, destination);
            let input = [header.clone(), rest].concat();
            let (parsed, length) = read_all(&input).unwrap().unwrap();
            prop_assert_eq!(length, header.len());
            prop_assert_eq!(parsed, ProxyHeader::Proxied { source, destination });
        }
    }
}
