//! The signature of a webhook batch: `Postern-Signature: t=<unix seconds>,v1=<hex>`, where the
//! hex is HMAC-SHA256 with the webhook's secret over `<t>.<body>`. The timestamp is signed so
//! that a receiver can refuse a batch replayed later (docs/deliverability.md#webhooks).

use std::fmt::Write;

/// The header that carries the signature.
pub const HEADER: &str = "postern-signature";

/// The value of [`HEADER`] for `body` sent at `timestamp` (seconds since the epoch).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let mut value = format!("t={timestamp},v1=");
    for byte in context.sign().as_ref() {
        let _ = write!(value, "{byte:02x}");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::sign;

    #[test]
    fn hmac_sha256_over_timestamp_dot_body() {
        // Computed independently: Python's
        // hmac.new(b"Jefe", b"1700000000.what do ya want for nothing?", "sha256").hexdigest()
        assert_eq!(
            sign(b"Jefe", 1_700_000_000, b"what do ya want for nothing?"),
            "t=1700000000,v1=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
    }
}
