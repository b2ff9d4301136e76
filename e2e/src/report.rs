//! Reading delivery status notifications as an independent MIME parser (mail-parser) sees them.

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
