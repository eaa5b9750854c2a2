//! The OpenAPI document served at `/api/v1/openapi.json` (`api::ops::document` merged with the relay's) documents
//! the error contract: every error status an operation documents is the status of a problem code, and every
//! problem code an operation can produce from its shape (a bearer token, query or path parameters, a JSON body)
//! is documented with its status.

use std::collections::{BTreeMap, BTreeSet};

use api::ProblemCode;
use serde_json::Value;

/// The codes an operation of this shape can answer with, whatever its handler decides.
fn codes_of_shape(operation: &Value) -> BTreeSet<&'static str> {
    let mut codes = BTreeSet::new();
    let secured = operation["security"].as_array().is_some_and(|schemes| !schemes.is_empty());
    if secured {
        // The Caller extractor: no valid token, a valid token of someone not on the roster, or a rate limit.
        codes.extend(["unauthenticated", "not_a_member", "rate_limited"]);
    }
    let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
    let located = |place: &str| parameters.iter().any(|parameter| parameter["in"] == place);
    if located("query") {
        // An unknown or repeated parameter; a value that is invalid or holds NUL.
        codes.extend(["invalid_request", "invalid_field"]);
    }
    if located("path") {
        // A segment holding NUL.
        codes.insert("invalid_field");
    }
    if operation["requestBody"].is_object() {
        codes.extend(["invalid_request", "payload_too_large", "unsupported_media_type", "invalid_field"]);
    }
    codes
}

#[test]
fn every_documented_error_status_is_a_problem_codes_and_every_possible_code_is_documented() {
    let document = serde_json::to_value(api::ops::document()).expect("the document serializes");
    let status_of: BTreeMap<&str, u16> =
        ProblemCode::ALL.iter().map(|code| (code.as_str(), code.status().as_u16())).collect();
    let problem_statuses: BTreeSet<u16> = status_of.values().copied().collect();
    let mut wrong = Vec::new();
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if !["get", "put", "post", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let documented: BTreeSet<u16> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .filter_map(|status| status.parse::<u16>().ok())
                .collect();
            for status in documented.iter().filter(|status| **status >= 400) {
                if !problem_statuses.contains(status) {
                    wrong.push(format!("{method} {path}: documents {status}, which no problem code has"));
                }
            }
            for code in codes_of_shape(operation) {
                let status = status_of[code];
                if !documented.contains(&status) {
                    wrong.push(format!("{method} {path}: can answer {status} {code}, which it does not document"));
                }
            }
        }
    }
    assert!(operations >= 35, "too few operations: {operations}");
    assert!(wrong.is_empty(), "the OpenAPI document and the error contract disagree:\n{}", wrong.join("\n"));
}

#[test]
fn every_429_documents_retry_after_in_whole_seconds() {
    let document = serde_json::to_value(api::ops::document()).expect("the document serializes");
    let mut limited = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Some(response) = operation["responses"].get("429") else { continue };
            limited += 1;
            let schema = &response["headers"]["Retry-After"]["schema"];
            assert_eq!(schema["type"], "integer", "{method} {path}: {response}");
            assert_eq!(schema["minimum"], 1, "{method} {path}: {response}");
            assert!(response["content"]["application/problem+json"].is_object(), "{method} {path}: {response}");
        }
    }
    assert!(limited >= 35, "only {limited} operations document 429");
}

#[test]
fn pages_are_documented_as_items_and_next() {
    let document = serde_json::to_value(api::ops::document()).expect("the document serializes");
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    let pages: Vec<&String> = schemas.keys().filter(|name| name.starts_with("Page")).collect();
    assert!(pages.len() >= 5, "{pages:?}");
    for name in pages {
        let properties = &schemas[name]["properties"];
        assert!(properties["items"]["type"] == "array", "{name}: {properties}");
        assert!(properties["next"].is_object(), "{name}: {properties}");
        let none = Vec::new();
        let required: Vec<&str> =
            schemas[name]["required"].as_array().unwrap_or(&none).iter().filter_map(Value::as_str).collect();
        assert_eq!(required, ["items"], "{name}: `next` is absent on the last page");
    }
}

/// Every string a request carries (body property, path, query or header parameter) is described by a pattern, an
/// enumeration or a format, and every integer by its range, so a client generating input from the document (or
/// schemathesis) stays within what the server accepts (`api/src/schemas.rs`).
#[test]
fn every_request_string_and_integer_carries_its_limits() {
    let document = serde_json::to_value(api::ops::document()).expect("the document serializes");
    let schemas = document["components"]["schemas"].clone();
    let mut unbounded = Vec::new();
    fn visit(schemas: &Value, schema: &Value, at: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.rsplit('/').next().unwrap_or_default().to_string();
            if seen.insert(name.clone()) {
                visit(schemas, &schemas[&name], &name, seen, out);
            }
            return;
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for (index, branch) in schema[key].as_array().into_iter().flatten().enumerate() {
                visit(schemas, branch, &format!("{at}/{key}[{index}]"), seen, out);
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                visit(schemas, property, &format!("{at}.{name}"), seen, out);
            }
        }
        if schema["items"].is_object() {
            visit(schemas, &schema["items"], &format!("{at}[]"), seen, out);
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let limited = ["pattern", "enum", "format", "const", "anyOf", "oneOf"].iter().any(|key| !schema[key].is_null());
        if types.contains(&"string") && !limited {
            out.push(format!("{at}: a string without pattern, enum or format"));
        }
        if types.contains(&"integer") && (schema["minimum"].is_null() || schema["maximum"].is_null()) {
            out.push(format!("{at}: an integer without minimum and maximum"));
        }
    }
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if path.ends_with("/terminal") || path.ends_with("/agent/connect") {
                continue; // WebSocket upgrades: the protocol, not the document, describes what they carry.
            }
            let mut seen = BTreeSet::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let at = format!("{method} {path} {} {}", parameter["in"], parameter["name"]);
                visit(&schemas, &parameter["schema"], &at, &mut seen, &mut unbounded);
            }
            for content in operation["requestBody"]["content"].as_object().into_iter().flat_map(|c| c.values()) {
                visit(&schemas, &content["schema"], &format!("{method} {path} body"), &mut seen, &mut unbounded);
            }
        }
    }
    assert!(unbounded.is_empty(), "request values the document leaves unbounded:\n{}", unbounded.join("\n"));
}
