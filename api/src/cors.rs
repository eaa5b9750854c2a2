//! Cross-origin requests from the configured frontend origins (`http_cors_allowed_origins`; actix-cors; ADR 0020).
//!
//! With no origin configured (the default) nothing is added: no CORS header on any answer, and a browser on another
//! origin cannot read the API. With origins configured, a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by the middleware itself, before routing: 200 with the allowed
//! methods, request headers and `Access-Control-Max-Age` for a listed origin, a problem document without any
//! `Access-Control-Allow-*` header otherwise (actix-cors answers 400 text; [`preflight_refusals`] turns that into
//! 403 `forbidden`). An actual request from a listed origin is served with `Access-Control-Allow-Origin` (the
//! origin itself) and `Access-Control-Expose-Headers`; from any other origin it is served without
//! `Access-Control-Allow-Origin`, so the browser keeps the answer from the page. Credentials (cookies) are never
//! allowed: the API takes bearer tokens. An `OPTIONS` without `Access-Control-Request-Method` is no preflight and
//! reaches the routes (405 with `Allow`).
//!
//! Browsers do not apply CORS to WebSockets; which origins may open a terminal is `relay_allowed_origins`.

use std::collections::HashSet;
use std::rc::Rc;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{Condition, ErrorHandlerResponse, ErrorHandlers};

use crate::{Problem, ProblemCode};

/// The methods a listed origin may use.
pub const ALLOWED_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// The request headers a listed origin may send besides the CORS-safelisted ones (the headers the API reads, and
/// `If-None-Match` for conditional reads).
pub const ALLOWED_HEADERS: [&str; 6] =
    ["authorization", "content-type", "if-match", "if-none-match", "idempotency-key", "x-request-id"];
/// The response headers a page may read besides the CORS-safelisted ones: every header the API answers with that
/// a client acts on.
pub const EXPOSED_HEADERS: [&str; 4] = ["etag", "location", "retry-after", "idempotent-replayed"];
/// Seconds a browser may cache a preflight's answer.
pub const MAX_AGE_SECS: usize = 600;

/// An origin as browsers send it: `http` or `https`, `://`, a host (a DNS name, an IPv4 address or a bracketed IPv6
/// address) and an optional port; no path, query, user or trailing `/`. Scheme and host are lower-cased and a
/// default port (80 for http, 443 for https) is dropped, as browsers do, so that the comparison with `Origin` is
/// exact. `*` and `null` are refused: list the frontends.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{raw:?} is not an origin (scheme://host[:port]): {why}"));
    let raw_trimmed = raw.trim();
    if raw_trimmed == "*" {
        return bad("`*` is refused; list each frontend origin");
    }
    let Some((scheme, rest)) = raw_trimmed.split_once("://") else { return bad("no scheme") };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return bad("the scheme must be http or https"),
    };
    if rest.is_empty() {
        return bad("no host");
    }
    if rest.contains(['/', '?', '#', '@', '\\']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("an origin has no path, query, fragment or user");
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else { return bad("unclosed [") };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address inside [ ]");
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return bad("text after ]"),
            },
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return bad("the host must be a DNS name (punycode for IDNs) or an IP address");
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {
                (port.trim_start_matches('0') != default_port).then(|| number.to_string())
            }
            _ => return bad("the port must be 1 to 65535"),
        },
    };
    Ok(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// The CORS middleware for `origins` (each already [`parse_origin`]d); disabled when there are none.
pub fn middleware(origins: &[String]) -> Condition<Cors> {
    let cors = origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods(ALLOWED_METHODS)
        .allowed_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(MAX_AGE_SECS);
    Condition::new(!origins.is_empty(), cors)
}

/// Wraps [`middleware`] (mount it outside): a preflight the CORS middleware refused (its 400 text answer) becomes a
/// problem document, 403 `forbidden` naming what was refused (400 `invalid_request` without `Origin`). Nothing
/// else changes.
pub fn preflight_refusals<B: MessageBody + 'static>(origins: &[String]) -> ErrorHandlers<B> {
    let origins: Rc<HashSet<String>> = Rc::new(origins.iter().cloned().collect());
    ErrorHandlers::new().handler(StatusCode::BAD_REQUEST, move |response: ServiceResponse<B>| {
        let request = response.request();
        let is_preflight = request.method() == Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let is_problem = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
        if !is_preflight || is_problem {
            return Ok(ErrorHandlerResponse::Response(response.map_into_left_body()));
        }
        let origin = request.headers().get(header::ORIGIN).and_then(|value| value.to_str().ok());
        let problem = match origin {
            None => Problem::invalid_request("Not a preflight", "A CORS preflight carries Origin."),
            Some(origin) if !origins.contains(origin) => Problem::new(ProblemCode::Forbidden, "Forbidden")
                .detail("Cross-origin requests from this origin are not allowed."),
            Some(_) => Problem::new(ProblemCode::Forbidden, "Forbidden").detail(format!(
                "Cross-origin requests may use the methods {} and the headers {}.",
                ALLOWED_METHODS.join(", "),
                ALLOWED_HEADERS.join(", ")
            )),
        };
        let (request, _) = response.into_parts();
        let answer = actix_web::ResponseError::error_response(&problem);
        Ok(ErrorHandlerResponse::Response(ServiceResponse::new(request, answer).map_into_right_body()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_as_browsers_send_them() {
        for (raw, parsed) in [
            ("https://portal.example.com", "https://portal.example.com"),
            ("HTTPS://Portal.Example.COM", "https://portal.example.com"),
            ("http://localhost:5173", "http://localhost:5173"),
            ("https://portal.example.com:443", "https://portal.example.com"),
            ("http://portal.example.com:80", "http://portal.example.com"),
            ("http://portal.example.com:443", "http://portal.example.com:443"),
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("https://[2001:DB8::1]", "https://[2001:db8::1]"),
            ("  https://a.example  ", "https://a.example"),
        ] {
            assert_eq!(parse_origin(raw).as_deref(), Ok(parsed), "{raw}");
        }
    }

    #[test]
    fn wildcards_paths_and_other_schemes_are_refused() {
        for raw in [
            "*",
            "null",
            "portal.example.com",
            "ftp://portal.example.com",
            "https://",
            "https://portal.example.com/",
            "https://portal.example.com/app",
            "https://portal.example.com?x=1",
            "https://user@portal.example.com",
            "https://*.example.com",
            "https://portal.example.com:0",
            "https://portal.example.com:65536",
            "https://portal.example.com:",
            "https://portal.example.com:+80",
            "https://por tal.example.com",
            "https://-portal.example.com",
            "https://portal..example.com",
            "http://[::1",
            "http://[not-v6]",
            "http://[::1]x",
        ] {
            assert!(parse_origin(raw).is_err(), "{raw} was accepted as {:?}", parse_origin(raw));
        }
        assert!(parse_origin("*").unwrap_err().contains("refused"));
    }
}
