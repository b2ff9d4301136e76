//! `delivery.routes`: fixed next hops chosen by recipient domain.

use postern_config::Route;

/// The route for `domain`: an exact match, else the longest `*.suffix` match, else `*`.
pub fn find<'a>(routes: &'a [Route], domain: &str) -> Option<&'a Route> {
    let domain = domain.to_ascii_lowercase();
    let exact = routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(&domain));
    let suffix = || {
        routes
            .iter()
            .filter_map(|r| {
                r.domain
                    .strip_prefix("*.")
                    .map(|suffix| (r, suffix.to_ascii_lowercase()))
            })
            .filter(|(_, suffix)| domain.ends_with(&format!(".{suffix}")))
            .max_by_key(|(_, suffix)| suffix.len())
            .map(|(r, _)| r)
    };
    exact
        .or_else(suffix)
        .or_else(|| routes.iter().find(|r| r.domain == "*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, host: &str) -> Route {
        Route {
            domain: domain.into(),
            host: host.into(),
            tls: Default::default(),
        }
    }

    #[test]
    fn exact_then_longest_suffix_then_wildcard() {
        let routes = [
            route("*", "any:25"),
            route("*.example.com", "sub:25"),
            route("*.eu.example.com", "eu:25"),
            route("example.com", "apex:25"),
        ];
        let host = |d: &str| find(&routes, d).map(|r| r.host.as_str());
        assert_eq!(host("Example.COM"), Some("apex:25"));
        assert_eq!(host("mail.example.com"), Some("sub:25"));
        assert_eq!(host("a.eu.example.com"), Some("eu:25"));
        assert_eq!(host("notexample.com"), Some("any:25"));
        assert_eq!(find(&routes[1..], "other.org"), None);
    }
}
