//! A DNS server on loopback answering from records the test sets: the real resolver path
//! (UDP, parsing, NXDOMAIN, SERVFAIL, caching) without the Internet.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Debug, Default)]
struct Zone {
    records: Vec<Record>,
    servfail: HashSet<String>,
}

/// A running DNS server.
#[derive(Debug, Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).expect("valid DNS name")
}

fn key(name: &Name) -> String {
    name.to_ascii().to_ascii_lowercase()
}

impl DnsServer {
    /// Starts a server on a free UDP port of 127.0.0.1.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binding the DNS server");
        let server = DnsServer {
            addr: socket.local_addr().expect("DNS address"),
            zone: Arc::default(),
        };
        let zone = server.zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if let Some(response) = answer(&zone, &buf[..n]) {
                    let _ = socket.send_to(&response, peer).await;
                }
            }
        });
        server
    }

    fn add(&self, owner: &str, data: RData) {
        let record = Record::from_rdata(name(owner), 60, data);
        self.zone.lock().expect("lock").records.push(record);
    }

    /// Adds an MX record; `exchange` "." makes a null MX (RFC 7505).
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) {
        let exchange = if exchange == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.add(domain, RData::MX(MX::new(preference, exchange)));
    }

    /// Adds an A or AAAA record.
    pub fn address(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(host, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(host, RData::AAAA(AAAA(v6))),
        }
    }

    /// Sets the TXT record of `owner`, replacing any it had. Strings longer than 255 bytes are
    /// split as DNS requires.
    pub fn txt(&self, owner: &str, text: &str) {
        let owner_key = key(&name(owner));
        self.zone
            .lock()
            .expect("lock")
            .records
            .retain(|r| !(key(&r.name) == owner_key && r.record_type() == RecordType::TXT));
        let parts = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(owner, RData::TXT(TXT::new(parts)));
    }

    /// Answers normally again for `domain`.
    pub fn clear_servfail(&self, domain: &str) {
        self.zone
            .lock()
            .expect("lock")
            .servfail
            .remove(&key(&name(domain)));
    }

    /// Answers SERVFAIL for every query about `domain`.
    pub fn servfail(&self, domain: &str) {
        self.zone
            .lock()
            .expect("lock")
            .servfail
            .insert(key(&name(domain)));
    }
}

fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    let zone = zone.lock().ok()?;
    let owner = key(&question.name);
    if zone.servfail.contains(&owner) {
        response.metadata.response_code = ResponseCode::ServFail;
    } else {
        let known = zone.records.iter().any(|r| key(&r.name) == owner);
        let matching = zone.records.iter().filter(|r| {
            key(&r.name) == owner
                && (r.record_type() == question.query_type
                    || question.query_type == RecordType::ANY)
        });
        for record in matching {
            response.add_answer(record.clone());
        }
        if !known {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
    }
    response.to_vec().ok()
}
