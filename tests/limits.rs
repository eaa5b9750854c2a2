//! Rate limits (429 with `Retry-After`) and CORS, over HTTP against a real server on a free port (ADR 0020).
//!
//! The limits are in memory and the same on both backends, so these tests run on the embedded store only.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{issue_token, Server};
use reqwest::header::HeaderMap;
use reqwest::Method;
use testkit::TestDb;

/// One request with optional token, `Origin` and `X-Forwarded-For`; the status, headers and body.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, HeaderMap, serde_json::Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `token` with one character of its signature changed: well-formed, but its signature does not verify.
fn forged(token: &str) -> String {
    let signature = token.rfind('.').unwrap() + 1;
    let mut bytes = token.as_bytes().to_vec();
    let at = signature + 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Checks a 429: a `rate_limited` problem document whose `Retry-After` is whole seconds (at least 1) and equals its
/// `retry_after`; returns the seconds.
fn assert_rate_limited(status: u16, headers: &HeaderMap, body: &serde_json::Value) -> u64 {
    assert_eq!(status, 429, "{body}");
    assert_eq!(header(headers, "content-type"), Some("application/problem+json"));
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert_eq!(body["status"], 429);
    assert_eq!(body["type"], "urn:gatehouse:problem:rate_limited");
    let seconds: u64 = header(headers, "retry-after").unwrap().parse().expect("Retry-After is whole seconds");
    assert!(seconds >= 1);
    assert_eq!(body["retry_after"], seconds, "{body}");
    seconds
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_api_limit_gets_429_and_passes_again_after_retry_after_while_others_are_unaffected() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "admin", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    // 60 per minute: a burst of 60, then one a second.
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "60")]);
    let http = reqwest::Client::new();
    let me = server.url("/api/v1/me");

    let mut passed = 0;
    let refusal = loop {
        let (status, headers, body) = send(&http, Method::GET, &me, Some(&ada), &[]).await;
        if status != 200 {
            break (status, headers, body);
        }
        passed += 1;
        assert!(passed < 1000, "1,000 requests in a row passed a limit of 60 a minute");
    };
    assert!(passed >= 60, "the burst is the limit: only {passed} passed");
    let (status, headers, body) = refusal;
    let retry_after = assert_rate_limited(status, &headers, &body);
    let text = body.to_string();
    assert!(!text.contains("ada") && !text.contains(&ada), "the problem names the user: {text}");

    // Another user, in the same window, and the endpoints that are never limited.
    let (status, _, body) = send(&http, Method::GET, &me, Some(&bob), &[]).await;
    assert_eq!(status, 200, "{body}");
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(send(&http, Method::GET, &server.url(path), None, &[]).await.0, 200, "{path}");
    }
    // Still refused in the window (a refusal spends nothing, so it does not make the wait longer).
    assert_eq!(send(&http, Method::GET, &me, Some(&ada), &[]).await.0, 429);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, body) = send(&http, Method::GET, &me, Some(&ada), &[]).await;
    assert_eq!(status, 200, "after Retry-After ({retry_after} s) the request passes: {body}");

    let (_, _, metrics) = send(&http, Method::GET, &server.url("/metrics"), None, &[]).await;
    let metrics = metrics.as_str().unwrap().to_string();
    let refused: u64 = metrics
        .lines()
        .find(|line| line.starts_with("gatehouse_rate_limited_total{limit=\"api\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no api counter in:\n{metrics}"));
    assert!(refused >= 2, "{refused}");
    assert!(!metrics.contains("example.com"), "a metric names a user");
    assert!(metrics.contains("route=\"/api/v1/me\",status=\"429\""), "429s are counted as requests too");
    for line in server.drain_logs() {
        assert!(!line.contains(&ada) && !line.contains(&bob), "a token was logged: {line}");
        if line.contains("rate limited") {
            assert!(!line.contains("@example.com") && !line.contains("127.0.0.1"), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_changed_while_serving_judges_the_next_request() {
    let db = TestDb::sqlite();
    let settings = gatehouse::Settings {
        listen: "127.0.0.1:0".into(),
        database_url: Some(db.url.clone()),
        data_dir: db.data_dir.clone(),
        bootstrap_admin: Some("root@example.com".into()),
        rate_limit_api_per_minute: Some(0),
        ..gatehouse::Settings::default()
    };
    let application = gatehouse::Application::build(&settings).await.unwrap();
    let limits = application.rate_limits();
    assert_eq!(limits.config().api_per_minute, 0);
    let me = format!("http://127.0.0.1:{}/api/v1/me", application.port());
    let stopper = application.stopper();
    let running = tokio::spawn(application.run_until_stopped());
    let issuer = settings.local_issuer().unwrap().unwrap();
    let root = issuer.issue(&domain::Email::parse("root@example.com").unwrap(), Duration::from_secs(3600)).unwrap();
    let http = reqwest::Client::new();

    for _ in 0..100 {
        assert_eq!(send(&http, Method::GET, &me, Some(&root), &[]).await.0, 200, "0 is no limit");
    }
    limits.set_api_per_minute(3);
    for request in 0..3 {
        assert_eq!(send(&http, Method::GET, &me, Some(&root), &[]).await.0, 200, "request {request}");
    }
    let (status, headers, body) = send(&http, Method::GET, &me, Some(&root), &[]).await;
    assert_eq!(assert_rate_limited(status, &headers, &body), 20, "3 a minute: one more every 20 s");
    limits.set_api_per_minute(0);
    assert_eq!(send(&http, Method::GET, &me, Some(&root), &[]).await.0, 200, "lifted at once");

    stopper.stop().await;
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_tokens_from_one_address_is_refused_before_verification_and_stalls_no_other_address() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "admin", "1h");
    // The test stands for a reverse proxy on loopback, so that X-Forwarded-For names the clients.
    let server = Server::start(
        &db,
        &[("GATEHOUSE_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "10"), ("GATEHOUSE_RELAY_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let http = reqwest::Client::new();
    let me = server.url("/api/v1/me");
    let bad = forged(&ada);
    assert_eq!(send(&http, Method::GET, &me, Some(&bad), &[]).await.0, 401, "the forged token is well-formed but bad");

    let flood = (0..4).map(|_| {
        let (http, me, bad) = (http.clone(), me.clone(), bad.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..100 {
                let (status, headers, body) =
                    send(&http, Method::GET, &me, Some(&bad), &[("x-forwarded-for", "203.0.113.7")]).await;
                if status == 429 {
                    assert_rate_limited(status, &headers, &body);
                }
                statuses.push(status);
            }
            statuses
        })
    });
    let flood: Vec<_> = flood.collect();
    // Meanwhile a user behind the same proxy, from another address, is served every time.
    for request in 0..50 {
        let (status, _, body) = send(&http, Method::GET, &me, Some(&ada), &[("x-forwarded-for", "198.51.100.2")]).await;
        assert_eq!(status, 200, "request {request} of the other address: {body}");
    }
    let mut statuses = Vec::new();
    for task in flood {
        statuses.extend(task.await.unwrap());
    }
    let unauthenticated = statuses.iter().filter(|status| **status == 401).count();
    let refused = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(unauthenticated + refused, 400, "{statuses:?}");
    // 10 failures are the allowance (one more every 6 s) and the 11th puts the address over it; the four flooders
    // may each slip one more in while another's failure is being counted.
    assert!(unauthenticated <= 20, "{unauthenticated} tokens were verified");

    // While refused, the address's valid tokens are not looked at either; another address is not refused.
    let (status, headers, body) =
        send(&http, Method::GET, &me, Some(&ada), &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_rate_limited(status, &headers, &body);
    let (status, _, _) = send(&http, Method::GET, &me, Some(&bad), &[("x-forwarded-for", "198.51.100.3")]).await;
    assert_eq!(status, 401);
    let (_, _, metrics) = send(&http, Method::GET, &server.url("/metrics"), None, &[]).await;
    assert!(metrics.as_str().unwrap().contains("gatehouse_rate_limited_total{limit=\"auth_failures\"}"));
    assert!(!metrics.as_str().unwrap().contains("203.0.113.7"), "a metric names an address");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_failure_limit() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "admin", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "5")]);
    let http = reqwest::Client::new();
    let me = server.url("/api/v1/me");
    let bad = forged(&ada);
    let mut statuses = Vec::new();
    for client in 0..20 {
        let spoofed = format!("198.51.100.{client}");
        statuses.push(send(&http, Method::GET, &me, Some(&bad), &[("x-forwarded-for", &spoofed)]).await.0);
    }
    // Five failures are the allowance; the sixth is still verified (401) and puts the address over it.
    assert_eq!(statuses.iter().filter(|status| **status == 401).count(), 6, "{statuses:?}");
    assert!(statuses[6..].iter().all(|status| *status == 429), "{statuses:?}");
    // A missing token costs nothing to refuse and is not counted; it is refused like any request from the address.
    assert_eq!(send(&http, Method::GET, &me, None, &[]).await.0, 429);
}

const PORTAL: &str = "https://portal.example.com";

#[tokio::test(flavor = "multi_thread")]
async fn without_configured_origins_no_answer_carries_cors_headers() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let http = reqwest::Client::new();
    let preflight = [("origin", PORTAL), ("access-control-request-method", "GET")];
    let answers = [
        send(&http, Method::OPTIONS, &server.url("/api/v1/me"), None, &preflight).await,
        send(&http, Method::GET, &server.url("/api/v1/me"), Some(&ada), &[("origin", PORTAL)]).await,
        send(&http, Method::GET, &server.url("/healthz"), None, &[("origin", PORTAL)]).await,
    ];
    for (status, headers, _) in &answers {
        let cors: Vec<_> = headers.keys().filter(|name| name.as_str().starts_with("access-control-")).collect();
        assert!(cors.is_empty(), "{status}: {cors:?}");
    }
    // Without CORS a preflight is just an OPTIONS: 405 with Allow, as before.
    assert_eq!(answers[0].0, 405);
    assert_eq!(header(&answers[0].1, "allow"), Some("GET"));
    assert_eq!(answers[1].0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_origins_get_cors_answers_and_other_origins_get_none() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "admin", "1h");
    let carol = issue_token(&db, "carol@example.com", "member", "1h");
    let server = Server::start(
        &db,
        &[
            ("GATEHOUSE_HTTP_CORS_ALLOWED_ORIGINS", "HTTPS://Portal.example.com:443, http://localhost:5173"),
            ("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "30"),
        ],
    );
    let http = reqwest::Client::new();
    let members = server.url("/api/v1/members");

    // A preflight from a listed origin (written differently in the setting, as the browser sends it).
    let (status, headers, _) = send(
        &http,
        Method::OPTIONS,
        &members,
        None,
        &[
            ("origin", PORTAL),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization, content-type, idempotency-key"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(PORTAL));
    let methods = header(&headers, "access-control-allow-methods").unwrap();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed = header(&headers, "access-control-allow-headers").unwrap().to_ascii_lowercase();
    for name in ["authorization", "content-type", "if-match", "if-none-match", "idempotency-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(header(&headers, "access-control-max-age"), Some("600"));
    assert!(headers.get("access-control-allow-credentials").is_none(), "bearer tokens, not cookies");
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"), "security headers on preflights too");
    let (status, headers, _) = send(
        &http,
        Method::OPTIONS,
        &members,
        None,
        &[("origin", "http://localhost:5173"), ("access-control-request-method", "DELETE")],
    )
    .await;
    assert_eq!((status, header(&headers, "access-control-allow-origin")), (200, Some("http://localhost:5173")));

    // Refused preflights: another origin, or a method or header not allowed. No allow header, a problem document.
    for (origin, method, request_headers) in [
        ("https://evil.example.com", "GET", None),
        ("https://portal.example.com.evil.example", "GET", None),
        ("http://portal.example.com", "GET", None),
        (PORTAL, "TRACE", None),
        (PORTAL, "POST", Some("x-evil")),
    ] {
        let mut extra = vec![("origin", origin), ("access-control-request-method", method)];
        if let Some(names) = request_headers {
            extra.push(("access-control-request-headers", names));
        }
        let (status, headers, body) = send(&http, Method::OPTIONS, &members, None, &extra).await;
        let what = format!("{origin} {method} {request_headers:?}");
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{what}: {body}");
        assert_eq!(header(&headers, "content-type"), Some("application/problem+json"), "{what}");
        let cors: Vec<_> = headers.keys().filter(|name| name.as_str().starts_with("access-control-allow")).collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    }

    // Actual requests from a listed origin can be read, with the headers the API sends.
    let (status, headers, _) =
        send(&http, Method::GET, &server.url("/api/v1/members/ada@example.com"), Some(&ada), &[("origin", PORTAL)])
            .await;
    assert_eq!(status, 200);
    assert!(headers.get("etag").is_some());
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(PORTAL));
    let exposed = header(&headers, "access-control-expose-headers").unwrap().to_ascii_lowercase();
    for name in ["etag", "location", "retry-after", "idempotent-replayed"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(header(&headers, "vary").unwrap().to_ascii_lowercase().contains("origin"));
    // Errors too, so that the page can read the problem.
    let (status, headers, _) = send(&http, Method::GET, &members, None, &[("origin", PORTAL)]).await;
    assert_eq!((status, header(&headers, "access-control-allow-origin")), (401, Some(PORTAL)));
    // From another origin the request is served, but the browser is not told it may show it to the page.
    let (status, headers, _) =
        send(&http, Method::GET, &members, Some(&ada), &[("origin", "https://evil.example.com")]).await;
    assert_eq!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());
    // OPTIONS that is not a preflight still reaches the routes.
    let (status, headers, body) = send(&http, Method::OPTIONS, &server.url("/api/v1/me"), Some(&ada), &[]).await;
    assert_eq!((status, header(&headers, "allow")), (405, Some("GET")), "{body}");

    // A 429 from a listed origin: the page can read Retry-After.
    let mut sent = 0;
    let limited = loop {
        let answer = send(&http, Method::GET, &server.url("/api/v1/me"), Some(&carol), &[("origin", PORTAL)]).await;
        if answer.0 != 200 {
            break answer;
        }
        sent += 1;
        assert!(sent < 1000, "1,000 requests in a row passed a limit of 30 a minute");
    };
    let (status, headers, body) = limited;
    assert_rate_limited(status, &headers, &body);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(PORTAL));
    assert!(header(&headers, "access-control-expose-headers").unwrap().to_ascii_lowercase().contains("retry-after"));
}
