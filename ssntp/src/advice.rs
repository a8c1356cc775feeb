//! What to do about a failed connection, in words an operator can act on, and how often to
//! say it. Pure: the failure's text and the time in, a sentence and a decision out.
//!
//! TLS libraries describe failures in their own terms ("invalid peer certificate: UnknownIssuer",
//! "received fatal alert: DecryptError"). [`advice`] translates the common ones into the fix;
//! [`FailureLog`] logs a failure as a warning when it first happens or changes, and again once a
//! minute while it lasts, so a daemon that retries every few seconds is neither silent nor
//! flooding its log.

/// The fix for a connection failure described by `reason` (the error's text), dialling
/// `target`; `None` when there is nothing better to say than the reason itself.
pub fn advice(reason: &str, target: &str) -> Option<String> {
    let r = reason.to_ascii_lowercase();
    let host = crate::tls::host_of(target);
    let text = if r.contains("not valid for name") {
        format!(
            "the server's certificate does not name {host:?}: dial a name or address it has (drover-cert show \
             its certificate), or issue it again with --host/--ip {host}"
        )
    } else if r.contains("unknownissuer") || r.contains("unknown issuer") {
        "the server's certificate is not signed by the CA given with --cacert (another cluster's CA?)".to_owned()
    } else if r.contains("revoked") {
        "a certificate was revoked: issue a new one (drover-cert issue) and restart with it".to_owned()
    } else if r.contains("expired") {
        "a certificate has expired: issue a new one (drover-cert issue), or check this machine's clock".to_owned()
    } else if r.contains("notvalidyet") || r.contains("not valid yet") {
        "a certificate is not valid yet: check this machine's clock".to_owned()
    } else if r.contains("decrypterror")
        || r.contains("bad certificate")
        || r.contains("badcertificate")
        || r.contains("unknownca")
        || r.contains("unknown ca")
    {
        "the server did not accept this certificate: it is signed by another CA than the server's, or \
         its key does not match it"
            .to_owned()
    } else if r.contains("connection refused") {
        format!("nothing accepts connections at {target}: is the server running and listening there (firewall?)")
    } else if r.contains("lookup address") || r.contains("name or service not known") {
        format!("{host:?} does not resolve: use an address, or a name this machine's resolver knows")
    } else if r.contains("timed out") || r.contains("no route") || r.contains("unreachable") {
        format!("{target} cannot be reached from here: check the address, the route and firewalls")
    } else {
        return None;
    };
    Some(text)
}

/// Say it again after this long while the same failure lasts, ms.
pub const REPEAT_MS: u64 = 60_000;

/// When to log a repeated connection failure.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<(String, u64)>,
    repeats: u64,
}

impl FailureLog {
    /// A failure `reason` at `now_ms`: whether to log it now (first, changed, or a minute since
    /// it was last logged), with how many times it happened unlogged since.
    pub fn failed(&mut self, reason: &str, now_ms: u64) -> Option<u64> {
        let due = match &self.last {
            Some((last, at)) => last != reason || now_ms.saturating_sub(*at) >= REPEAT_MS,
            None => true,
        };
        if due {
            let unlogged = std::mem::take(&mut self.repeats);
            self.last = Some((reason.to_owned(), now_ms));
            Some(unlogged)
        } else {
            self.repeats += 1;
            None
        }
    }

    /// The connection succeeded: the next failure is news again.
    pub fn connected(&mut self) {
        self.last = None;
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_failures_say_what_to_fix() {
        let name = "i/o: invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only \
                    valid for DnsName(\"sched.example\")";
        assert!(advice(name, "127.0.0.1:8888").unwrap().contains("--host/--ip 127.0.0.1"));
        assert!(advice("invalid peer certificate: UnknownIssuer", "h:1").unwrap().contains("--cacert"));
        assert!(advice("received fatal alert: DecryptError", "h:1").unwrap().contains("another CA"));
        assert!(advice("invalid peer certificate: Revoked", "h:1").unwrap().contains("revoked"));
        assert!(advice("invalid peer certificate: Expired", "h:1").unwrap().contains("clock"));
        assert!(advice("i/o: Connection refused (os error 111)", "h:8888").unwrap().contains("h:8888"));
        assert!(advice("i/o: failed to lookup address information: Name or service not known", "sched.example:1")
            .unwrap()
            .contains("\"sched.example\" does not resolve"));
        assert_eq!(advice("something new", "h:1"), None);
    }

    #[test]
    fn a_lasting_failure_is_logged_once_a_minute_and_a_new_one_at_once() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed("refused", 0), Some(0));
        assert_eq!(log.failed("refused", 5_000), None);
        assert_eq!(log.failed("refused", 10_000), None);
        assert_eq!(log.failed("refused", 60_000), Some(2), "again after a minute, with the count");
        assert_eq!(log.failed("revoked", 61_000), Some(0), "a different failure is news");
        log.connected();
        assert_eq!(log.failed("revoked", 62_000), Some(0), "and so is one after a success");
    }
}
