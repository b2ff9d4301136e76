//! Sending one TLS report (RFC 8460 §3, §5): gzipped JSON, by mail through the relay's own
//! queue (from the null sender, so that it can never bounce back) or by HTTPS POST.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use postern_config::Config;
use postern_dns::Dns;
use postern_queue::{ClientFacts, Queue, Submission, Submitted};
use postern_smtp::date::{rfc3339_ms, rfc5322_date};
use tracing::{info, warn};

use super::report::{self, Destination, Submitter, Tally};
use crate::webhooks::endpoint::Endpoint;

/// How long an HTTPS POST of a report may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Sender {
    hostname: String,
    organization: String,
    contact: String,
    queue: Queue,
    dns: Dns,
    tls: Arc<rustls::ClientConfig>,
}

impl Sender {
    pub fn new(config: &Config, queue: Queue, dns: Dns, tls: Arc<rustls::ClientConfig>) -> Sender {
        let wanted = &config.delivery.tls_rpt;
        Sender {
            organization: wanted
                .organization
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            contact: wanted
                .contact
                .clone()
                .unwrap_or_else(|| format!("postmaster@{}", config.hostname)),
            hostname: config.hostname.clone(),
            queue,
            dns,
            tls,
        }
    }

    /// Sends the report of `policies` to every destination of `domain`; the result for
    /// metrics: `sent` (to at least one), `failed`, or `no_destination`.
    pub async fn send(
        &self,
        domain: &str,
        (start_ms, end_ms): (u64, u64),
        policies: &[&Tally],
    ) -> &'static str {
        let records = match self.dns.txt(&format!("_smtp._tls.{domain}")).await {
            Ok(records) => records,
            Err(failure) => {
                warn!(%domain, ?failure, "TLS report destinations not looked up; report dropped");
                return "failed";
            }
        };
        let destinations = report::destinations(&records);
        if destinations.is_empty() {
            return "no_destination";
        }
        let id = format!("{}.{}@{}", ulid::Ulid::new(), domain, self.hostname);
        let submitter = Submitter {
            organization: &self.organization,
            contact: &self.contact,
        };
        let range = (rfc3339_ms(start_ms), rfc3339_ms(end_ms));
        let json = report::report_json(&submitter, &id, (&range.0, &range.1), domain, policies);
        let gzipped = match gzip(json.to_string().as_bytes()) {
            Ok(gzipped) => gzipped,
            Err(err) => {
                warn!(%domain, %err, "TLS report not compressed");
                return "failed";
            }
        };
        let file = format!(
            "{}!{domain}!{}!{}!{}.json.gz",
            self.hostname,
            start_ms / 1000,
            end_ms / 1000,
            ulid::Ulid::new()
        );
        let mut sent = false;
        for destination in destinations {
            let result = match &destination {
                Destination::Mailto(address) => {
                    self.mail(address, domain, &id, &file, &gzipped).await
                }
                Destination::Https(url) => self.post(url, domain, &gzipped).await,
            };
            match result {
                Ok(()) => {
                    info!(%domain, report_id = %id, ?destination, "TLS report sent");
                    sent = true;
                }
                Err(err) => {
                    warn!(%domain, report_id = %id, ?destination, %err, "TLS report not sent")
                }
            }
        }
        if sent { "sent" } else { "failed" }
    }

    async fn post(&self, url: &str, domain: &str, gzipped: &[u8]) -> Result<(), String> {
        let endpoint = Endpoint::new(url, self.tls.clone(), POST_TIMEOUT)
            .ok_or_else(|| format!("{url} is not an https URL"))?;
        let headers = [("tls-report-domain", domain.to_string())];
        match endpoint
            .post(
                "application/tlsrpt+gzip",
                &headers,
                Bytes::copy_from_slice(gzipped),
            )
            .await
        {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("answered HTTP {status}")),
            Err(err) => Err(err.to_string()),
        }
    }

    async fn mail(
        &self,
        address: &str,
        domain: &str,
        id: &str,
        file: &str,
        gzipped: &[u8],
    ) -> Result<(), String> {
        let recipient_domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .ok_or_else(|| format!("{address} has no domain"))?;
        let message = self.message(address, domain, id, file, gzipped);
        let submission = Submission {
            queue_id: ulid::Ulid::new().to_string(),
            sender: String::new(),
            recipients: vec![(address.to_string(), recipient_domain)],
            content: Submitted::Whole(message),
            received_at_ms: postern_queue::now_ms(),
            client: ClientFacts {
                address: "127.0.0.1".into(),
                helo: self.hostname.clone(),
                tls: None,
                auth_user: None,
            },
            smtputf8: false,
            eight_bit_mime: false,
            eight_bit: false,
            traceparent: String::new(),
            dsn: Default::default(),
            require_tls: false,
            tls_optional: false,
            message_id: Some(format!("<{id}>")),
        };
        self.queue
            .enqueue(submission)
            .await
            .map_err(|e| e.to_string())
    }

    /// The report mail (RFC 8460 §5.3): `multipart/report; report-type="tlsrpt"` with the
    /// gzipped report as `application/tlsrpt+gzip`.
    fn message(&self, to: &str, domain: &str, id: &str, file: &str, gzipped: &[u8]) -> Vec<u8> {
        let boundary = format!("tlsrpt-{}", ulid::Ulid::new());
        let encoded = base64::engine::general_purpose::STANDARD.encode(gzipped);
        let mut body = String::new();
        for line in encoded.as_bytes().chunks(76) {
            body.push_str(&String::from_utf8_lossy(line));
            body.push_str("\r\n");
        }
        let date = rfc5322_date(UNIX_EPOCH + Duration::from_millis(postern_queue::now_ms()));
        format!(
            "From: TLS reporting <postmaster@{host}>\r\n\
             To: <{to}>\r\n\
             Date: {date}\r\n\
             Message-ID: <{id}>\r\n\
             Subject: Report Domain: {domain} Submitter: {host} Report-ID: <{id}>\r\n\
             TLS-Report-Domain: {domain}\r\n\
             TLS-Report-Submitter: {host}\r\n\
             Auto-Submitted: auto-generated\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             This is an aggregate TLS report (RFC 8460) from {host} about {domain}.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: application/tlsrpt+gzip\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{file}\"\r\n\
             \r\n\
             {body}\
             --{boundary}--\r\n",
            host = self.hostname,
        )
        .into_bytes()
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}
