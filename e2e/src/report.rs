//! Reading delivery status notifications as an independent MIME parser (mail-parser) sees them,
//! and TLS reports (RFC 8460) as JSON.

/// A multipart/report: its report type and each part's `(content type, decoded body)`.
pub fn parts(message: &[u8]) -> (String, Vec<(String, String)>) {
    use mail_parser::MimeHeaders;
    let parsed = mail_parser::MessageParser::default()
        .parse(message)
        .expect("a MIME message");
    let root = &parsed.parts[0];
    let report_type = root
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .expect("a report type")
        .to_string();
    let mail_parser::PartType::Multipart(ids) = &root.body else {
        panic!("not multipart: {}", String::from_utf8_lossy(message));
    };
    let parts = ids
        .iter()
        .map(|&id| {
            let part = &parsed.parts[id as usize];
            let ct = part.content_type().expect("a content type");
            (
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()),
                String::from_utf8_lossy(part.contents()).into_owned(),
            )
        })
        .collect();
    (report_type, parts)
}

/// The TLS reports POSTed to `server` so far, each checked to be `application/tlsrpt+gzip`
/// to `/tlsrpt` (the URL [`crate::HttpsServer::accept_reports`] gives).
pub fn posted_tls_reports(server: &crate::HttpsServer) -> Vec<serde_json::Value> {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            assert_eq!(r.path, "/tlsrpt");
            assert_eq!(r.header("content-type"), Some("application/tlsrpt+gzip"));
            tls_report_json(&r.body)
        })
        .collect()
}

/// A gzipped TLS report's JSON.
pub fn tls_report_json(gzipped: &[u8]) -> serde_json::Value {
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gzipped), &mut json)
        .expect("a gzipped report");
    serde_json::from_slice(&json).expect("a JSON report")
}

/// What `reports` say about the policies of `domain`: successful sessions, and failed ones as
/// `(result type, MX host, count)`.
pub fn tls_report_sums(
    reports: &[serde_json::Value],
    domain: &str,
) -> (u64, Vec<(String, String, u64)>) {
    let mut successes = 0;
    let mut failures: Vec<(String, String, u64)> = Vec::new();
    let policies = reports
        .iter()
        .flat_map(|r| r["policies"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["policy"]["policy-domain"] == domain);
    for policy in policies {
        successes += policy["summary"]["total-successful-session-count"]
            .as_u64()
            .unwrap_or_default();
        let details = policy["failure-details"].as_array().cloned();
        for detail in details.unwrap_or_default() {
            let kind = detail["result-type"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mx = detail["receiving-mx-hostname"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let count = detail["failed-session-count"].as_u64().unwrap_or_default();
            match failures.iter_mut().find(|(k, m, _)| *k == kind && *m == mx) {
                Some(known) => known.2 += count,
                None => failures.push((kind, mx, count)),
            }
        }
    }
    (successes, failures)
}
