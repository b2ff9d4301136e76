//! DANE for SMTP (RFC 7672): MX and address records validated with DNSSEC, the TLSA records
//! of each MX host, and what they make of its TLS. Off, with a warning, while the resolver
//! upstream does not let answers validate.

pub mod tlsa;
pub mod verifier;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postern_config::DeliveryConfig;
use postern_dns::{DnsSetupError, SecureDns, SecureFailure, TlsaFields, Validated};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::metrics::Metrics;
use tlsa::Tlsa;

/// How often the upstream check runs again.
const PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// What DANE makes of one MX host's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTls {
    /// Usable TLSA records: STARTTLS is mandatory and the certificate must match one.
    Authenticated(Arc<Vec<Tlsa>>),
    /// Signed TLSA records, none usable: STARTTLS is mandatory, any certificate
    /// (RFC 7672 §2.2).
    Encrypted,
    /// No DANE for this host: no TLSA records, or records DNSSEC does not vouch for.
    Absent,
    /// The TLSA records could not be had or failed validation: the host gets no mail now.
    Failed(String),
}

/// The TLSA answer for one host, as a decision (RFC 7672 §2.2): pure.
pub fn decide(answer: Result<Validated<Vec<TlsaFields>>, SecureFailure>) -> HostTls {
    match answer {
        Ok(found) if !found.secure || found.value.is_empty() => HostTls::Absent,
        Ok(found) => {
            let usable: Vec<Tlsa> = found
                .value
                .into_iter()
                .map(|(usage, selector, matching, data)| Tlsa {
                    usage,
                    selector,
                    matching,
                    data,
                })
                .filter(Tlsa::usable)
                .collect();
            if usable.is_empty() {
                HostTls::Encrypted
            } else {
                HostTls::Authenticated(Arc::new(usable))
            }
        }
        Err(SecureFailure::Bogus(why)) => HostTls::Failed(why),
        Err(SecureFailure::Temporary(why)) => HostTls::Failed(format!("lookup failed: {why}")),
        Err(SecureFailure::NxDomain) => HostTls::Absent,
    }
}

/// DANE of one delivery process.
#[derive(Debug)]
pub struct Dane {
    dns: SecureDns,
    probe: String,
    available: AtomicBool,
    first_check: OnceCell<()>,
    metrics: Arc<Metrics>,
}

impl Dane {
    /// DANE as `delivery.dane` asks; none when it is off.
    pub fn new(
        config: &DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Dane>>, DnsSetupError> {
        if !config.dane.enabled {
            return Ok(None);
        }
        let dns = SecureDns::new(
            &config.dns.nameservers,
            config.dane.trust_anchor_file.as_deref(),
        )?;
        Ok(Some(Arc::new(Dane {
            dns,
            probe: config.dane.probe.clone(),
            available: AtomicBool::new(false),
            first_check: OnceCell::new(),
            metrics,
        })))
    }

    /// True when answers validate, after the first check (which the first caller waits for);
    /// the check then repeats in the background.
    pub async fn ready(self: &Arc<Dane>) -> bool {
        self.first_check
            .get_or_init(|| async {
                self.check().await;
                let dane = Arc::downgrade(self);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(PROBE_INTERVAL).await;
                        let Some(dane) = dane.upgrade() else { return };
                        dane.check().await;
                    }
                });
            })
            .await;
        self.available.load(Ordering::Relaxed)
    }

    /// Looks the probe name up and turns DANE on or off by whether it validated.
    async fn check(&self) {
        let result = self.dns.probe(&self.probe).await;
        let ok = result.is_ok();
        let was = self.available.swap(ok, Ordering::Relaxed);
        self.metrics.dane_enabled.set(i64::from(ok));
        match result {
            Ok(()) if !was => info!(probe = %self.probe, "DNSSEC answers validate; DANE is on"),
            Err(why) if was || !self.first_check.initialized() => warn!(
                probe = %self.probe,
                %why,
                "DNSSEC answers do not validate, so DANE is off: the name servers in delivery.dns (or /etc/resolv.conf) must pass DNSSEC records on (a validating or plain forwarding resolver does; one that strips signatures does not); checked again every 5 minutes"
            ),
            _ => {}
        }
    }

    /// The mail exchangers of `domain`, and whether DNSSEC vouches for them.
    pub async fn exchangers(
        &self,
        domain: &str,
        seed: u64,
    ) -> Result<Validated<postern_dns::Exchangers>, SecureFailure> {
        self.dns.exchangers(domain, seed).await
    }

    /// What DANE makes of `host`'s TLS on `port`: its TLSA records count only when its address
    /// records validate too (RFC 7672 §2.2.2).
    pub async fn host(&self, host: &str, port: u16) -> HostTls {
        let decision = match self.dns.addresses(host).await {
            Ok(addresses) if addresses.secure => {
                decide(self.dns.tlsa(&format!("_{port}._tcp.{host}")).await)
            }
            Ok(_) | Err(SecureFailure::NxDomain) => HostTls::Absent,
            Err(SecureFailure::Bogus(why)) => HostTls::Failed(why),
            // The plain lookup at connection time says what is wrong with the addresses.
            Err(SecureFailure::Temporary(_)) => HostTls::Absent,
        };
        let label = match &decision {
            HostTls::Authenticated(_) => "authenticated",
            HostTls::Encrypted => "encrypted",
            HostTls::Absent => "absent",
            HostTls::Failed(_) => "failed",
        };
        self.metrics
            .dane_hosts
            .get_or_create(&vec![("result", label)])
            .inc();
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(
        secure: bool,
        records: Vec<TlsaFields>,
    ) -> Result<Validated<Vec<TlsaFields>>, SecureFailure> {
        Ok(Validated {
            value: records,
            secure,
        })
    }

    #[test]
    fn usable_signed_records_authenticate() {
        let digest = vec![1u8; 32];
        let decision = decide(found(
            true,
            vec![(3, 1, 1, digest.clone()), (1, 1, 1, digest.clone())],
        ));
        let HostTls::Authenticated(records) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(records.len(), 1, "the PKIX-EE record is not usable");
        assert_eq!(records[0].usage, 3);
    }

    #[test]
    fn signed_but_unusable_records_still_ask_for_tls() {
        assert_eq!(
            decide(found(
                true,
                vec![(0, 0, 1, vec![1; 32]), (3, 1, 9, vec![1])]
            )),
            HostTls::Encrypted
        );
    }

    #[test]
    fn unsigned_or_missing_records_mean_no_dane() {
        assert_eq!(
            decide(found(false, vec![(3, 1, 1, vec![1; 32])])),
            HostTls::Absent
        );
        assert_eq!(decide(found(true, vec![])), HostTls::Absent);
        assert_eq!(decide(Err(SecureFailure::NxDomain)), HostTls::Absent);
    }

    #[test]
    fn bogus_or_failed_lookups_keep_mail_from_the_host() {
        assert!(matches!(
            decide(Err(SecureFailure::Bogus("bad signature".into()))),
            HostTls::Failed(why) if why == "bad signature"
        ));
        assert!(matches!(
            decide(Err(SecureFailure::Temporary("SERVFAIL".into()))),
            HostTls::Failed(why) if why.contains("SERVFAIL")
        ));
    }
}
