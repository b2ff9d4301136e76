//! MTA-STS records and policies (RFC 8461 §3) and the MX rule of §4.1, as pure functions.

use std::time::Duration;

/// The largest `max_age` a policy may set (RFC 8461 §3.2): about a year.
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(31_557_600);

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts over TLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy, and report what enforcing it would have refused.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns in lower case without a final dot: a host name, or `*.` and a domain for
    /// any one label in front of it.
    pub mx: Vec<String>,
    /// How long the policy may be cached.
    pub max_age: Duration,
}

/// Why a record or a policy was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("more than one TXT record starts with v=STSv1")]
    SeveralRecords,
    #[error("the TXT record has no valid id (1 to 32 letters and digits)")]
    RecordId,
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the policy has no {0} field")]
    Missing(&'static str),
    #[error("mode {0} needs at least one mx field")]
    NoMx(&'static str),
}

/// The policy id of a domain's `_mta-sts` TXT records: none when no record starts with
/// `v=STSv1` (other TXT records there are not MTA-STS's).
pub fn record_id(records: &[String]) -> Result<Option<String>, Invalid> {
    let mut sts = records.iter().filter(|r| {
        r.strip_prefix("v=STSv1")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
    });
    let Some(record) = sts.next() else {
        return Ok(None);
    };
    if sts.next().is_some() {
        return Err(Invalid::SeveralRecords);
    }
    let id = record
        .split(';')
        .skip(1)
        .filter_map(|field| field.trim_matches([' ', '\t']).strip_prefix("id="))
        .next()
        .filter(|id| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or(Invalid::RecordId)?;
    Ok(Some(id.to_string()))
}

/// Parses a policy file (lines of `key: value`, ended by LF or CRLF). Unknown keys are
/// ignored; of a repeated key other than `mx` the first counts; a `max_age` above a year is
/// taken as a year.
pub fn parse(text: &str) -> Result<Policy, Invalid> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |message: String| Invalid::Line {
            line: index + 1,
            message,
        };
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("{line:?} is not key: value")))?;
        let value = value.trim_matches([' ', '\t']);
        match key {
            "version" if version.is_none() => {
                if value != "STSv1" {
                    return Err(invalid(format!("version {value:?} is not STSv1")));
                }
                version = Some(());
            }
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(invalid(format!("unknown mode {other:?}"))),
                });
            }
            "max_age" if max_age.is_none() => {
                let seconds = (!value.is_empty() && value.len() <= 10)
                    .then(|| value.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| invalid(format!("max_age {value:?} is not 1 to 10 digits")))?;
                max_age = Some(Duration::from_secs(seconds).min(MAX_AGE_LIMIT));
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_pattern(&pattern) {
                    return Err(invalid(format!("mx {value:?} is not a host name pattern")));
                }
                mx.push(pattern);
            }
            _ => {}
        }
    }
    version.ok_or(Invalid::Missing("version"))?;
    let mode = mode.ok_or(Invalid::Missing("mode"))?;
    let max_age = max_age.ok_or(Invalid::Missing("max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(Invalid::NoMx(mode.as_str()));
    }
    Ok(Policy { mode, mx, max_age })
}

fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Policy {
    /// Whether `host` matches one of the policy's MX patterns (RFC 8461 §4.1): exactly, or
    /// one label in front of a `*.` pattern's domain.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
                None => *pattern == host,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn record_ids() {
        let id = |texts: &[&str]| record_id(&records(texts));
        assert_eq!(
            id(&["v=STSv1; id=20160831085700Z;"]),
            Ok(Some("20160831085700Z".into()))
        );
        assert_eq!(id(&["v=STSv1;id=abc"]), Ok(Some("abc".into())));
        assert_eq!(
            id(&["v=STSv1; ext=1; id=x9 ;"]),
            Ok(Some("x9".into())),
            "extension fields come before the id too"
        );
        assert_eq!(id(&["v=spf1 -all", "google-site=x"]), Ok(None));
        assert_eq!(id(&[]), Ok(None));
        assert_eq!(id(&["v=STSv10; id=1"]), Ok(None), "not v=STSv1");
        assert_eq!(
            id(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Err(Invalid::SeveralRecords)
        );
        assert_eq!(id(&["v=STSv1;"]), Err(Invalid::RecordId));
        assert_eq!(id(&["v=STSv1; id=a-b"]), Err(Invalid::RecordId));
        assert_eq!(
            id(&[&format!("v=STSv1; id={}", "1".repeat(33))]),
            Err(Invalid::RecordId)
        );
    }

    #[test]
    fn the_rfc_example_parses() {
        let policy = parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(
            policy,
            Policy {
                mode: Mode::Enforce,
                mx: vec![
                    "mail.example.com".into(),
                    "*.example.net".into(),
                    "backupmx.example.com".into()
                ],
                max_age: Duration::from_secs(604_800),
            }
        );
    }

    #[test]
    fn lenient_where_the_rfc_allows_it() {
        // LF line ends, no final newline, unknown keys, blanks, upper-case MX, a final dot.
        let policy =
            parse("version: STSv1\nmode:testing\nfoo: bar\n\nmx: MX.Example.ORG.\nmax_age:86400")
                .unwrap();
        assert_eq!(policy.mode, Mode::Testing);
        assert_eq!(policy.mx, ["mx.example.org"]);
        let capped = parse("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 9999999999").unwrap();
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
        let first = parse("version: STSv1\nmode: none\nmode: enforce\nmax_age: 1").unwrap();
        assert_eq!(first.mode, Mode::None, "the first of a repeated key counts");
        assert!(first.mx.is_empty(), "mode none needs no mx");
    }

    #[test]
    fn invalid_policies_say_why() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(
            err("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1"),
            "line 1: version \"STSv2\" is not STSv1"
        );
        assert_eq!(
            err("version: STSv1\nmode: strict\nmx: a\nmax_age: 1"),
            "line 2: unknown mode \"strict\""
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a\nmax_age: -1"),
            "line 4: max_age \"-1\" is not 1 to 10 digits"
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmax_age: 1"),
            "mode enforce needs at least one mx field"
        );
        assert_eq!(
            err("mode: enforce\nmx: a\nmax_age: 1"),
            "the policy has no version field"
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a\nmax_age: 1\n<html>"),
            "line 5: \"<html>\" is not key: value"
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1"),
            "line 3: mx \"a..b\" is not a host name pattern"
        );
    }

    #[test]
    fn mx_patterns_match_one_label_at_most() {
        let policy = Policy {
            mode: Mode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: Duration::from_secs(1),
        };
        assert!(policy.allows("mail.example.com"));
        assert!(policy.allows("MAIL.example.com."));
        assert!(policy.allows("mx1.example.net"));
        assert!(!policy.allows("example.net"), "the wildcard needs a label");
        assert!(!policy.allows("a.mx1.example.net"), "one label only");
        assert!(!policy.allows("mail.example.com.evil"));
        assert!(!policy.allows("xmail.example.com"));
    }
}
