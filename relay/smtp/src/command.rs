//! SMTP command lines: one line in (without its CRLF), one [`Command`] out.

use crate::address::{self, Address, AddressError, ReversePath};
use crate::dsn::{self, DsnError, OriginalRecipient, RecipientDsn, Ret};

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: Address,
        /// `NOTIFY` and `ORCPT` (RFC 3461).
        dsn: RecipientDsn,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
}

/// ESMTP parameters of MAIL FROM that Postern supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    /// `RET` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID` (RFC 3461), decoded.
    pub envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689): every hop must be verified TLS.
    pub require_tls: bool,
}

/// The BODY= parameter (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// SASL mechanisms offered by AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command unrecognized")]
    Unrecognized,
    #[error("CR, LF or NUL inside a command")]
    ForbiddenByte,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    #[error("parameter not supported: {0}")]
    UnsupportedParam(String),
    #[error("{0}")]
    Dsn(#[from] DsnError),
    #[error("mechanism not supported")]
    UnsupportedMechanism,
}

impl Command {
    /// Parses one command line, without its terminating CRLF.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        if line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(CommandError::ForbiddenByte);
        }
        let line =
            std::str::from_utf8(line).map_err(|_| CommandError::Syntax("command is not UTF-8"))?;
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, rest),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let no_args = |cmd: Command| {
            if rest.trim().is_empty() {
                Ok(cmd)
            } else {
                Err(CommandError::Syntax("no parameters allowed"))
            }
        };
        match verb.as_str() {
            "EHLO" => domain_arg(rest).map(Command::Ehlo),
            "HELO" => domain_arg(rest).map(Command::Helo),
            "MAIL" => parse_mail(rest),
            "RCPT" => parse_rcpt(rest),
            "DATA" => no_args(Command::Data),
            "BDAT" => parse_bdat(rest),
            "RSET" => no_args(Command::Rset),
            "NOOP" => Ok(Command::Noop),
            "QUIT" => no_args(Command::Quit),
            "VRFY" => Ok(Command::Vrfy),
            "EXPN" => Ok(Command::Expn),
            "HELP" => Ok(Command::Help),
            "STARTTLS" => no_args(Command::StartTls),
            "AUTH" => parse_auth(rest),
            _ => Err(CommandError::Unrecognized),
        }
    }
}

fn domain_arg(rest: &str) -> Result<String, CommandError> {
    let arg = rest.trim();
    if arg.is_empty() || arg.contains(' ') {
        return Err(CommandError::Syntax(
            "expected one domain or address literal",
        ));
    }
    Ok(arg.to_string())
}

/// Strips a case-insensitive keyword such as `FROM:` and the spaces after it.
fn keyword<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let head = rest.get(..word.len())?;
    head.eq_ignore_ascii_case(word)
        .then(|| rest[word.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` at the end of the path, honouring quoted local parts.
fn split_path(text: &str) -> (&str, &str) {
    if !text.starts_with('<') {
        return text.split_once(' ').unwrap_or((text, ""));
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return (&text[..=i], text[i + 1..].trim_start_matches(' ')),
            _ => {}
        }
    }
    (text, "")
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let rest =
        keyword(rest, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, params_text) = split_path(rest);
    let from = address::parse_reverse_path(path).map_err(CommandError::Sender)?;
    let mut params = MailParams::default();
    for param in params_text.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                let size = value
                    .parse()
                    .map_err(|_| CommandError::Syntax("SIZE needs a number"))?;
                params.size = Some(size);
            }
            "BODY" => {
                params.body = Some(match value.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(CommandError::UnsupportedParam(param.to_string())),
                })
            }
            "SMTPUTF8" if value.is_empty() => params.smtputf8 = true,
            "REQUIRETLS" if value.is_empty() => params.require_tls = true,
            "RET" => once(&mut params.ret, value.parse()?)?,
            "ENVID" => once(&mut params.envid, dsn::parse_envid(value)?)?,
            // RFC 4954 §5: AUTH=<> or AUTH=addr may be sent by any client; Postern does not trust it.
            "AUTH" => {}
            _ => return Err(CommandError::UnsupportedParam(param.to_string())),
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let rest = keyword(rest, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, params) = split_path(rest);
    let to = address::parse_forward_path(path).map_err(CommandError::Recipient)?;
    let mut dsn = RecipientDsn::default();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "NOTIFY" => once(&mut dsn.notify, value.parse()?)?,
            "ORCPT" => once(&mut dsn.orcpt, OriginalRecipient::parse(value)?)?,
            _ => return Err(CommandError::UnsupportedParam(param.to_string())),
        }
    }
    Ok(Command::Rcpt { to, dsn })
}

/// Sets a parameter that may be given once (RFC 3461 §4: twice is a syntax error).
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), CommandError> {
    if slot.replace(value).is_some() {
        return Err(DsnError::Repeated.into());
    }
    Ok(())
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(CommandError::Syntax("expected BDAT <size> [LAST]"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected BDAT <size> [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("expected BDAT <size> [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("PLAIN") => Mechanism::Plain,
        Some("LOGIN") => Mechanism::Login,
        Some(_) => return Err(CommandError::UnsupportedMechanism),
        None => return Err(CommandError::Syntax("expected AUTH <mechanism>")),
    };
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax(
            "expected AUTH <mechanism> [initial-response]",
        ));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes())
    }

    #[test]
    fn parses_mail_with_params() {
        let Command::Mail { from, params } =
            parse("mail from: <a@b.example> SIZE=100 BODY=8BITMIME SMTPUTF8").unwrap()
        else {
            panic!("not MAIL");
        };
        assert_eq!(from.to_string(), "a@b.example");
        assert_eq!(
            params,
            MailParams {
                size: Some(100),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                ..Default::default()
            }
        );
        assert_eq!(
            parse("MAIL FROM:<> AUTH=<>").unwrap(),
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            }
        );
    }

    #[test]
    fn parses_dsn_params() {
        let Command::Mail { params, .. } =
            parse("MAIL FROM:<a@b.example> ret=hdrs ENVID=QQ+2B1").unwrap()
        else {
            panic!("not MAIL");
        };
        assert_eq!(params.ret, Some(Ret::Hdrs));
        assert_eq!(params.envid.as_deref(), Some("QQ+1"));
        assert!(!params.require_tls);
        let Command::Mail { params, .. } = parse("MAIL FROM:<a@b.example> requiretls").unwrap()
        else {
            panic!("not MAIL");
        };
        assert!(params.require_tls);
        assert_eq!(
            parse("MAIL FROM:<a@b> REQUIRETLS=YES"),
            Err(CommandError::UnsupportedParam("REQUIRETLS=YES".into()))
        );
        let Command::Rcpt { to, dsn } =
            parse("RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;C+40d.example")
                .unwrap()
        else {
            panic!("not RCPT");
        };
        assert_eq!(to.to_string(), "c@d.example");
        assert_eq!(
            dsn.notify.map(|n| n.to_string()).as_deref(),
            Some("SUCCESS,FAILURE")
        );
        assert_eq!(dsn.orcpt.map(|o| o.address).as_deref(), Some("C@d.example"));
    }

    #[test]
    fn refuses_bad_dsn_params() {
        let cases = [
            ("MAIL FROM:<a@b> RET=ALL", DsnError::Ret),
            ("MAIL FROM:<a@b> RET=FULL RET=HDRS", DsnError::Repeated),
            ("MAIL FROM:<a@b> ENVID=a=b", DsnError::Envid),
            ("MAIL FROM:<a@b> ENVID=a ENVID=b", DsnError::Repeated),
            ("RCPT TO:<a@b> NOTIFY=NEVER,DELAY", DsnError::Notify),
            ("RCPT TO:<a@b> NOTIFY", DsnError::Notify),
            (
                "RCPT TO:<a@b> NOTIFY=DELAY NOTIFY=DELAY",
                DsnError::Repeated,
            ),
            ("RCPT TO:<a@b> ORCPT=a@b", DsnError::Orcpt),
            (
                "RCPT TO:<a@b> ORCPT=rfc822;a@b ORCPT=rfc822;a@b",
                DsnError::Repeated,
            ),
        ];
        for (line, error) in cases {
            assert_eq!(parse(line), Err(CommandError::Dsn(error)), "{line}");
        }
    }

    #[test]
    fn quoted_local_part_may_hold_spaces_and_brackets() {
        let Command::Rcpt { to, .. } = parse("RCPT TO:<\"a >b\"@c.example>").unwrap() else {
            panic!()
        };
        assert_eq!(to.local(), "\"a >b\"");
    }

    #[test]
    fn refuses_what_it_must() {
        assert_eq!(
            parse("MAIL FROM:<a@b> MT-PRIORITY=3"),
            Err(CommandError::UnsupportedParam("MT-PRIORITY=3".into()))
        );
        assert_eq!(
            parse("RCPT TO:<a@b> XFORWARD=1"),
            Err(CommandError::UnsupportedParam("XFORWARD=1".into()))
        );
        assert_eq!(parse("XYZZY"), Err(CommandError::Unrecognized));
        assert_eq!(parse("MAIL FROM:<a\0@b>"), Err(CommandError::ForbiddenByte));
        assert_eq!(parse("MAIL FROM:<a\r@b>"), Err(CommandError::ForbiddenByte));
        assert_eq!(
            parse("AUTH CRAM-MD5"),
            Err(CommandError::UnsupportedMechanism)
        );
        assert!(matches!(parse("BDAT x"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("DATA now"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn parses_bdat_and_auth() {
        assert_eq!(
            parse("BDAT 10 LAST").unwrap(),
            Command::Bdat {
                size: 10,
                last: true
            }
        );
        assert_eq!(
            parse("BDAT 0").unwrap(),
            Command::Bdat {
                size: 0,
                last: false
            }
        );
        assert_eq!(
            parse("AUTH plain AGEAYg==").unwrap(),
            Command::Auth {
                mechanism: Mechanism::Plain,
                initial: Some("AGEAYg==".into())
            }
        );
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Command::parse(&line);
        }

        #[test]
        fn never_panics_on_mail_like(s in "(?i)(MAIL FROM:|RCPT TO:|BDAT |AUTH )\\PC{0,60}") {
            let _ = Command::parse(s.as_bytes());
        }

        #[test]
        fn accepts_the_mail_it_prints(local in "[a-z0-9!#%+_-]{1,12}", domain in "[a-z]{1,10}\\.[a-z]{2,5}", size in 0u64..1_000_000) {
            let line = format!("MAIL FROM:<{local}@{domain}> SIZE={size}");
            let Command::Mail { from, params } = Command::parse(line.as_bytes()).unwrap() else { panic!() };
            prop_assert_eq!(format!("MAIL FROM:<{from}> SIZE={}", params.size.unwrap()), line);
        }
    }
}
