//! A DNS server on loopback that serves DNSSEC-signed zones, for DANE: a root zone signed with
//! a key the test trusts (`trust_anchor`), signed child zones delegated with DS records,
//! unsigned child zones delegated with NSEC proofs that they have none, RRSIGs over every
//! RRset of a signed zone, and NSEC chains for every negative answer. Signatures can be broken
//! for one name (a bogus answer), and the server can act as an upstream that drops DNSSEC
//! records altogether.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::dnssec::crypto::Ed25519SigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS, NSEC, RRSIG, SigInput};
use hickory_proto::dnssec::{DigestType, DnssecSigner, SigningKey, TBS};
use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, NS, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};
use tokio::net::UdpSocket;

const TTL: u32 = 60;

struct ZoneKey {
    signer: DnssecSigner,
    dnskey: DNSKEY,
}

struct Zone {
    apex: Name,
    key: Option<ZoneKey>,
}

#[derive(Default)]
struct State {
    /// The root zone first.
    zones: Vec<Zone>,
    records: Vec<Record>,
    /// Owners whose signatures are broken.
    bogus: HashSet<Name>,
    /// Answer like a resolver that drops RRSIG and NSEC records.
    strip: bool,
}

/// A running signed DNS server.
#[derive(Clone)]
pub struct SignedDns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SignedDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedDns")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn name(text: &str) -> Name {
    let text = text.trim_end_matches('.');
    if text.is_empty() {
        return Name::root();
    }
    Name::from_ascii(format!("{text}."))
        .expect("valid DNS name")
        .to_lowercase()
}

fn new_key(apex: &Name) -> ZoneKey {
    let pkcs8 = Ed25519SigningKey::generate_pkcs8().expect("an Ed25519 key");
    let key = Ed25519SigningKey::from_pkcs8(&pkcs8).expect("the key just made");
    let public = key.to_public_key().expect("its public key");
    let dnskey = DNSKEY::from_key(&public);
    let signer = DnssecSigner::new(
        dnskey.clone(),
        Box::new(key),
        apex.clone(),
        std::time::Duration::from_secs(86_400),
    );
    ZoneKey { signer, dnskey }
}

impl SignedDns {
    /// Starts a server on a free UDP port of 127.0.0.1 with a signed root zone, the `signed`
    /// zones delegated securely and the `unsigned` ones insecurely.
    pub async fn start(signed: &[&str], unsigned: &[&str]) -> SignedDns {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binding the DNS server");
        let mut state = State::default();
        let root = Name::root();
        state.zones.push(Zone {
            key: Some(new_key(&root)),
            apex: root,
        });
        for apex in signed {
            let apex = name(apex);
            state.zones.push(Zone {
                key: Some(new_key(&apex)),
                apex,
            });
        }
        for apex in unsigned {
            state.zones.push(Zone {
                apex: name(apex),
                key: None,
            });
        }
        let server = SignedDns {
            addr: socket.local_addr().expect("DNS address"),
            state: Arc::new(Mutex::new(state)),
        };
        let state = server.state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let response = {
                    let state = state.lock().expect("lock");
                    respond(&state, &buf[..n])
                };
                if let Some(response) = response {
                    let _ = socket.send_to(&response, peer).await;
                }
            }
        });
        server
    }

    /// The root zone's key as a DNSKEY record in zone-file form, for
    /// `delivery.dane.trustAnchorFile`.
    pub fn trust_anchor(&self) -> String {
        let state = self.state.lock().expect("lock");
        let key = state.zones[0].key.as_ref().expect("the root is signed");
        format!(". {TTL} IN DNSKEY {}\n", key.dnskey)
    }

    fn add(&self, owner: &str, data: RData) {
        let record = Record::from_rdata(name(owner), TTL, data);
        self.state.lock().expect("lock").records.push(record);
    }

    /// Adds an MX record.
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) {
        self.add(domain, RData::MX(MX::new(preference, name(exchange))));
    }

    /// Adds an A or AAAA record.
    pub fn address(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(host, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(host, RData::AAAA(AAAA(v6))),
        }
    }

    /// Adds a TLSA record at `owner` (`_25._tcp.mx.example`).
    pub fn tlsa(&self, owner: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) {
        let tlsa = TLSA::new(usage.into(), selector.into(), matching.into(), data);
        self.add(owner, RData::TLSA(tlsa));
    }

    /// Adds a TXT record of one string.
    pub fn txt(&self, owner: &str, text: &str) {
        self.add(owner, RData::TXT(TXT::new(vec![text.to_string()])));
    }

    /// Breaks the signatures of every RRset at `owner`: a validating resolver finds them bogus.
    pub fn break_signatures(&self, owner: &str) {
        self.state.lock().expect("lock").bogus.insert(name(owner));
    }

    /// Drops RRSIG and NSEC records from every answer, as a resolver that strips DNSSEC does.
    pub fn strip_dnssec(&self, strip: bool) {
        self.state.lock().expect("lock").strip = strip;
    }
}

/// The zone that answers for `name`: the deepest whose apex is at or above it; for a DS query
/// at a zone's apex, its parent.
fn zone_of(state: &State, qname: &Name, ds: bool) -> usize {
    let mut best = 0;
    for (i, zone) in state.zones.iter().enumerate() {
        let above = zone.apex.zone_of(qname) && !(ds && zone.apex == *qname && i != 0);
        if above && zone.apex.num_labels() >= state.zones[best].apex.num_labels() {
            best = i;
        }
    }
    best
}

/// Every record of zone `zi`: its apex records, the records the test added under it, and the
/// delegations of its child zones.
fn zone_records(state: &State, zi: usize) -> Vec<Record> {
    let zone = &state.zones[zi];
    let apex = &zone.apex;
    let ns = Name::from_ascii("ns")
        .expect("a label")
        .append_domain(apex)
        .expect("a name");
    let mut records = vec![
        Record::from_rdata(
            apex.clone(),
            TTL,
            RData::SOA(SOA::new(ns.clone(), ns.clone(), 1, 3600, 600, 86_400, TTL)),
        ),
        Record::from_rdata(apex.clone(), TTL, RData::NS(NS(ns))),
    ];
    if let Some(key) = &zone.key {
        records.push(Record::from_rdata(
            apex.clone(),
            TTL,
            RData::DNSSEC(DNSSECRData::DNSKEY(key.dnskey.clone())),
        ));
    }
    records.extend(
        state
            .records
            .iter()
            .filter(|r| zone_of(state, &r.name, false) == zi)
            .cloned(),
    );
    for (ci, child) in state.zones.iter().enumerate() {
        if ci == 0 || ci == zi || zone_of(state, &child.apex, true) != zi {
            continue;
        }
        let ns = Name::from_ascii("ns")
            .expect("a label")
            .append_domain(&child.apex)
            .expect("a name");
        records.push(Record::from_rdata(
            child.apex.clone(),
            TTL,
            RData::NS(NS(ns)),
        ));
        if let Some(key) = &child.key {
            let public = key.dnskey.public_key();
            let ds = DS::from_key(public, &child.apex, DigestType::SHA256).expect("a DS digest");
            records.push(Record::from_rdata(
                child.apex.clone(),
                TTL,
                RData::DNSSEC(DNSSECRData::DS(ds)),
            ));
        }
    }
    records
}

/// The RRSIG over `rrset` (one owner, one type) by the zone's key.
fn sign(key: &ZoneKey, apex: &Name, rrset: &[Record], broken: bool) -> Record {
    let first = &rrset[0];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as u32;
    let input = SigInput {
        type_covered: first.record_type(),
        algorithm: key.signer.key().algorithm(),
        num_labels: first.name.num_labels(),
        original_ttl: first.ttl,
        sig_expiration: SerialNumber::new(now + 86_400),
        sig_inception: SerialNumber::new(now - 3600),
        key_tag: key.signer.calculate_key_tag().expect("a key tag"),
        signer_name: apex.clone(),
    };
    let tbs =
        TBS::from_input(&first.name, DNSClass::IN, &input, rrset.iter()).expect("the data to sign");
    let mut signature = key.signer.sign(&tbs).expect("a signature");
    if broken {
        signature[0] ^= 0xff;
    }
    Record::from_rdata(
        first.name.clone(),
        first.ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
    )
}

/// The NSEC chain of a zone's records, in canonical order.
fn nsec_chain(records: &[Record]) -> Vec<Record> {
    let mut owners: Vec<Name> = records.iter().map(|r| r.name.clone()).collect();
    owners.sort();
    owners.dedup();
    owners
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            let next = owners[(i + 1) % owners.len()].clone();
            let types: Vec<RecordType> = records
                .iter()
                .filter(|r| r.name == *owner)
                .map(Record::record_type)
                .collect();
            Record::from_rdata(
                owner.clone(),
                TTL,
                RData::DNSSEC(DNSSECRData::NSEC(NSEC::new_cover_self(next, types))),
            )
        })
        .collect()
}

/// The NSEC whose owner is `qname`, or else the one whose span covers it.
fn nsec_for<'a>(chain: &'a [Record], qname: &Name) -> Option<&'a Record> {
    chain.iter().find(|r| r.name == *qname).or_else(|| {
        chain
            .iter()
            .filter(|r| r.name < *qname)
            .max_by(|a, b| a.name.cmp(&b.name))
            .or_else(|| chain.last())
    })
}

/// Adds the RRSIG of each RRset among `records` (signed zones only).
fn with_signatures(state: &State, zi: usize, records: Vec<Record>) -> Vec<Record> {
    let zone = &state.zones[zi];
    let Some(key) = &zone.key else {
        return records;
    };
    let mut sets: Vec<(Name, RecordType)> = records
        .iter()
        .map(|r| (r.name.clone(), r.record_type()))
        .collect();
    sets.dedup();
    let mut out = records.clone();
    for (owner, kind) in sets {
        let rrset: Vec<Record> = records
            .iter()
            .filter(|r| r.name == owner && r.record_type() == kind)
            .cloned()
            .collect();
        out.push(sign(key, &zone.apex, &rrset, state.bogus.contains(&owner)));
    }
    out
}

fn respond(state: &State, query: &[u8]) -> Option<Vec<u8>> {
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
    if let Some(edns) = &request.edns {
        let mut reply = Edns::new();
        reply.set_max_payload(4096);
        reply.set_dnssec_ok(edns.flags().dnssec_ok);
        response.set_edns(reply);
    }
    let qname = question.name.to_lowercase();
    let qtype = question.query_type;
    let zi = zone_of(state, &qname, qtype == RecordType::DS);
    let records = zone_records(state, zi);
    let matching: Vec<Record> = records
        .iter()
        .filter(|r| r.name == qname && r.record_type() == qtype)
        .cloned()
        .collect();
    let signed = state.zones[zi].key.is_some();
    if !matching.is_empty() {
        for record in with_signatures(state, zi, matching) {
            response.add_answer(record);
        }
    } else {
        let exists = records.iter().any(|r| qname.zone_of(&r.name));
        let soa: Vec<Record> = records
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .cloned()
            .collect();
        let mut authority = soa;
        if signed {
            let chain = nsec_chain(&records);
            let mut proofs: Vec<Record> = nsec_for(&chain, &qname).into_iter().cloned().collect();
            if !exists {
                // The closest existing ancestor, and no wildcard below it.
                let mut encloser = qname.base_name();
                while !records.iter().any(|r| encloser.zone_of(&r.name)) {
                    encloser = encloser.base_name();
                }
                let wildcard = Name::from_ascii("*")
                    .expect("a label")
                    .append_domain(&encloser)
                    .expect("a name");
                if let Some(nsec) = nsec_for(&chain, &wildcard)
                    && !proofs.contains(nsec)
                {
                    proofs.push(nsec.clone());
                }
            }
            authority.extend(proofs);
        }
        for record in with_signatures(state, zi, authority) {
            response.add_authority(record);
        }
        if !exists {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
    }
    if state.strip {
        let keep = |r: &Record| !matches!(r.record_type(), RecordType::RRSIG | RecordType::NSEC);
        response.answers.retain(keep);
        response.authorities.retain(keep);
    }
    response.to_vec().ok()
}
