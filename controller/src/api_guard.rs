//! What the API does around every request: a bound on each client's rate, the body size limit,
//! and an audit line for every call that changes something.
//!
//! - **Rate**: a token bucket per client certificate subject ([`Buckets`], pure, with the time
//!   passed in): [`RATE_PER_S`] requests a second on average, bursts of [`BURST`]. Over it, 429
//!   with `Retry-After`. At most [`MAX_CLIENTS`] buckets are kept (overflow policy: full buckets,
//!   those of clients idle long enough to have refilled, are forgotten first; if none is, the
//!   new client shares one overflow bucket).
//! - **Size**: request bodies above [`MAX_BODY`] get 413 (axum's `DefaultBodyLimit`).
//! - **Audit**: every request other than GET and HEAD logs one `drover::audit` line: the
//!   certificate subject, the tenant asked for, method, path and status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::api::{ApiError, Caller};

/// Largest request body, bytes (a workload file, a launch).
pub const MAX_BODY: usize = 1 << 20;
/// Requests a second one client may make on average.
pub const RATE_PER_S: f64 = 100.0;
/// Requests one client may make at once.
pub const BURST: f64 = 200.0;
/// Clients whose buckets are kept.
pub const MAX_CLIENTS: usize = 10_000;

/// The key of the bucket clients beyond [`MAX_CLIENTS`] share.
const OVERFLOW: &str = "";

/// Token buckets per client (pure: the caller says what time it is).
#[derive(Debug)]
pub struct Buckets {
    rate: f64,
    burst: f64,
    max_clients: usize,
    by_client: HashMap<String, (f64, Instant)>,
}

impl Buckets {
    /// Buckets of `burst` tokens refilled at `rate` a second, for at most `max_clients`.
    pub fn new(rate: f64, burst: f64, max_clients: usize) -> Self {
        Self { rate, burst, max_clients: max_clients.max(1), by_client: HashMap::new() }
    }

    /// Takes a token for `client` at `now`: `Ok`, or how long until one is there.
    ///
    /// # Errors
    /// The bucket is empty: the wait until the next token.
    pub fn take(&mut self, client: &str, now: Instant) -> Result<(), Duration> {
        if !self.by_client.contains_key(client) && self.by_client.len() >= self.max_clients {
            self.forget_full(now);
        }
        let key = if self.by_client.contains_key(client) || self.by_client.len() < self.max_clients {
            client
        } else {
            OVERFLOW
        };
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.by_client.entry(key.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// Forgets the buckets that have refilled (their clients have been idle).
    fn forget_full(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.by_client.retain(|key, (tokens, at)| {
            key == OVERFLOW || *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
        });
    }
}

/// How fast one client may call the API (`drover-controller --api-rate`, `--api-burst`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests a second on average.
    pub per_s: f64,
    /// Requests at once.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_s: RATE_PER_S, burst: BURST }
    }
}

/// The guard's shared state.
#[derive(Debug)]
pub struct Guard {
    limit: RateLimit,
    buckets: Mutex<Buckets>,
}

impl Guard {
    /// A guard allowing each client `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let per_s = limit.per_s.max(f64::MIN_POSITIVE);
        Self { limit, buckets: Mutex::new(Buckets::new(per_s, limit.burst.max(1.0), MAX_CLIENTS)) }
    }
}

/// The middleware: rate, then the call, then the audit line.
#[allow(clippy::disallowed_methods)] // the API's shell: the rate limiter's clock
pub async fn guard(
    State(guard): State<Arc<Guard>>,
    caller: Option<Extension<Caller>>,
    request: Request,
    next: Next,
) -> Response {
    let subject = match caller.as_ref().map(|Extension(c)| c) {
        Some(Caller::User { name, .. }) => name.clone(),
        _ => "anonymous".to_owned(),
    };
    let waited = guard.buckets.lock().expect("buckets lock").take(&subject, Instant::now());
    if let Err(wait) = waited {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {} requests a second from {subject}; slow down", guard.limit.per_s),
        )
        .into_response();
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(value) = secs.parse() {
            response.headers_mut().insert("retry-after", value);
        }
        return response;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let tenant = request.headers().get("x-drover-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's own answer is plain text; every API error is JSON.
        response = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {MAX_BODY} bytes"))
            .into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        tracing::info!(
            target: "drover::audit",
            subject,
            tenant = tenant.as_deref().unwrap_or("-"),
            %method,
            path,
            status = response.status().as_u16(),
            "API call"
        );
    }
    response
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin for the buckets' time; only offsets matter
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_touched() {
        let start = Instant::now();
        let mut b = Buckets::new(10.0, 3.0, 2);
        for _ in 0..3 {
            assert!(b.take("alice", start).is_ok());
        }
        let wait = b.take("alice", start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert!(b.take("bob", start).is_ok(), "another client has its own bucket");
        assert!(b.take("alice", start + Duration::from_millis(100)).is_ok(), "one token a tenth of a second");
        assert!(b.take("alice", start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_idle_clients_are_forgotten_first() {
        let start = Instant::now();
        let mut b = Buckets::new(10.0, 2.0, 2);
        b.take("alice", start).unwrap();
        b.take("bob", start).unwrap();
        // Both busy: a third client shares the overflow bucket.
        b.take("carol", start).unwrap();
        b.take("dave", start).unwrap();
        assert!(b.take("erin", start).is_err(), "the shared overflow bucket is empty");
        // A second later alice and bob have refilled: they make room.
        let later = start + Duration::from_secs(1);
        assert!(b.take("carol", later).is_ok());
        assert!(b.by_client.contains_key("carol"));
    }
}
