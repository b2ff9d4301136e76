//! A look at start-up whether MX delivery can reach mail servers at all: most clouds and home
//! networks block outbound port 25, and then every MX delivery defers with a connection
//! timeout until the mail expires. The check only warns; delivery goes on as configured.

use std::net::SocketAddr;
use std::time::Duration;

use postern_dns::{Dns, Exchangers};
use tokio::net::TcpStream;
use tracing::{info, warn};

/// How long one connection may take before it counts as blocked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// MX hosts, and addresses of each, tried before the check gives up.
const TRIED: usize = 2;

/// Connects to the MX hosts of `probe` on `port` (the first two hosts, two addresses each);
/// warns when none answers, and says so when the lookup fails.
pub async fn check(dns: Dns, probe: String, port: u16) {
    let hosts = match dns.exchangers(&probe, 0).await {
        Ok(Exchangers::Hosts(hosts)) => hosts,
        Ok(Exchangers::Implicit) => vec![probe.clone()],
        Ok(Exchangers::Null) => {
            warn!(field = "delivery.egressProbe", %probe, "the egress probe has a null MX, so whether this host can reach mail servers on port {port} was not checked; name a domain that receives mail");
            return;
        }
        Err(_) => {
            warn!(field = "delivery.egressProbe", %probe, "the MX records of the egress probe could not be looked up, so whether this host can reach mail servers on port {port} is not known; MX delivery needs DNS");
            return;
        }
    };
    let mut tried = Vec::new();
    for host in hosts.iter().take(TRIED) {
        let Ok(addresses) = dns.addresses(host).await else {
            continue;
        };
        for ip in addresses.into_iter().take(TRIED) {
            let address = SocketAddr::new(ip, port);
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(_)) => {
                    info!(%probe, %host, %address, "outbound SMTP works: reached an MX host of the egress probe");
                    return;
                }
                Ok(Err(err)) => tried.push(format!("{host} ({address}): {err}")),
                Err(_) => tried.push(format!(
                    "{host} ({address}): no answer in {}s",
                    CONNECT_TIMEOUT.as_secs()
                )),
            }
        }
    }
    warn!(
        field = "delivery.egressProbe",
        %probe,
        tried = %tried.join("; "),
        "outbound SMTP on port {port} looks blocked: no MX host of the egress probe could be reached, so MX delivery will defer; most clouds and home networks block port 25: send through a smarthost (delivery.smarthost) or routes, or ask the provider to open it"
    );
}
