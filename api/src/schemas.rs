//! The limits the validating code enforces, written into the OpenAPI document's request schemas and parameters, so
//! that input a client generates from the document is accepted and input outside it is refused with a problem
//! naming the field (checked by schemathesis in CI, `.ci/run`, and by `tests/openapi.rs`).
//!
//! utoipa derives each schema's shape from its Rust type; this module adds what the type cannot say — patterns,
//! lengths, enumerations, cross-field rules — from the constants the validators use. Patterns are written in the
//! common subset of ECMA-262 and Python regular expressions (JSON Schema's dialect and schemathesis's), anchored.
//! Where a rule cannot be a regular expression (a CIDR's host bits, an ACL rule whose value depends on its type),
//! the schema says a subset or uses `oneOf`: a value the schema admits is always accepted.

use domain::blueprint::values as blueprint;
use domain::portal;
use domain::publishing::values::{MAX_MESSAGE_CHARS, MAX_REASON_CHARS};
use serde_json::{json, Map, Value};

/// 1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (`domain::values::identifier`).
pub const IDENTIFIER: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
/// A new blueprint's key: [`IDENTIFIER`] without upper case.
pub const NEW_KEY: &str = r"^[a-z0-9][a-z0-9._-]{0,127}$";
/// `domain::Email::parse`: printable ASCII, one `@`, a local part of 1–64 characters and a domain that neither starts
/// nor ends with a dot.
pub const EMAIL: &str = r"^[!-?A-~]{1,64}@[!-\-/-?A-~](?:[!-?A-~]*[!-\-/-?A-~])?$";
/// `domain::values::text`: something besides white space, no control characters but newline and tab.
pub const TEXT: &str = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$";
/// Optional text (blank counts as absent): no control characters but newline and tab.
pub const OPTIONAL_TEXT: &str = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$";
/// `domain::values::line`: [`TEXT`] without newlines and tabs.
pub const LINE: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
/// Optional one line: no control characters.
pub const OPTIONAL_LINE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// `Subdomain::parse`: a DNS label of a-z, 0-9 and `-`, without `--` as its third and fourth characters.
pub const SUBDOMAIN: &str = concat!(
    r"^(?:[a-z0-9]|[a-z0-9]{2}|[a-z0-9][a-z0-9-][a-z0-9]",
    r"|[a-z0-9][a-z0-9-](?:[a-z0-9-][a-z0-9]|[a-z0-9][a-z0-9-]{1,59}[a-z0-9]|-[a-z0-9][a-z0-9-]{0,58}[a-z0-9]))$"
);
/// `EmailDomain::parse`: dot-separated labels of letters, digits and `-` (folded to lower case).
pub const DOMAIN: &str =
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
/// `GitBranch::parse`: components of `A-Z a-z 0-9 _ -` joined by single dots, separated by `/`, not starting with
/// `-` (git's own rules; a component ending in `.lock` is refused too, which a pattern without look-around cannot
/// say).
pub const BRANCH: &str = r"^[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*(?:/[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)*$";
/// `GitRepository::parse`: a URL of a known scheme, an absolute path, or git's `user@host:path`.
pub const REPOSITORY: &str = concat!(
    r"^(?:(?:https?|ssh|git|file)://[!-,.-~][!-~]*|/[!-~]*",
    r"|[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[!-,.-9;-~][!-~]*)$"
);
/// `Shell::parse`: an absolute path of non-empty components other than `.` and `..`.
pub const SHELL: &str =
    r"^(?:/(?:[A-Za-z0-9_+-][A-Za-z0-9._+-]*|\.[A-Za-z0-9_+-][A-Za-z0-9._+-]*|\.\.[A-Za-z0-9._+-]+))+$";
/// `NameTemplate::parse`: one line whose braces enclose only the placeholders, with at least one letter, digit or
/// placeholder (so that it renders to a name).
pub const NAME_TEMPLATE: &str = concat!(
    r"^(?:[^{}\x00-\x1f\x7f-\x9f]|\{(?:user|blueprint|random|name)\})*",
    r"(?:[A-Za-z0-9]|\{(?:user|blueprint|random|name)\})",
    r"(?:[^{}\x00-\x1f\x7f-\x9f]|\{(?:user|blueprint|random|name)\})*$"
);
/// An IPv4 network the firewall accepts: a bare address, `/32`, or `/0`, `/8`, `/16`, `/24` with the host octets
/// zero (a subset: every network with its host bits zero is accepted, IPv6 too; see docs/API.md).
pub const CIDR: &str = concat!(
    r"^(?:(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    r"(?:/32)?|0\.0\.0\.0/0|(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.0\.0\.0/8",
    r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){2}0\.0/16",
    r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}0/24)$"
);
/// A list's `after` over (time, id): the `next` a page gave (`<RFC 3339 UTC time with microseconds>|<id>`).
pub const TIME_CURSOR: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\|[!-{}-~]{1,300}$";
/// [`TIME_CURSOR`] of a list of publish requests (the id is a request id).
pub const REQUEST_CURSOR: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\|[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
/// An RFC 3339 time (a subset: days 01 to 28, which every month has; the server takes every valid time).
pub const RFC3339: &str = concat!(
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]",
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
);
/// A cursor of the global log (`g1.<txid>.<position>`).
pub const LOG_CURSOR: &str = r"^g1\.[0-9]{1,19}\.[0-9]{1,18}$";
/// An agent token's id: its SHA-256, hexadecimal.
pub const TOKEN_ID: &str = r"^[0-9a-f]{64}$";
/// An aggregate type: lower case and `_`.
pub const AGGREGATE_TYPE: &str = r"^[a-z_]{1,64}$";
/// Any one line of printable text (ids the API compares, never parses).
pub const PRINTABLE: &str = r"^[^\x00-\x1f\x7f-\x9f]+$";
/// A plaintext secret (`crate::vault::check_plaintext`): printable ASCII without spaces.
pub const SECRET: &str = r"^[!-~]{12,3000}$";
/// An AI model's name (`ModelName::parse`): printable ASCII without spaces.
pub const MODEL: &str = r"^[!-~]{1,200}$";
/// `EndpointUrl::parse`: `https://` or `http://`, then a host (not `/`, `?` or `#`), printable ASCII without spaces.
pub const ENDPOINT: &str = r#"^https?://[!"$-.0->@-~][!-~]*$"#;
/// `Idempotency-Key`: 1 to 255 printable ASCII characters.
pub const IDEMPOTENCY_KEY: &str = r"^[!-~]{1,255}$";

/// `pattern`, or blank (a field whose blank value clears it or counts as absent; the server trims).
fn blank_or(pattern: &str, max: usize) -> Value {
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    json!({ "pattern": format!("^(?:[ \\t\\n\\r]*|(?:{inner}))$"), "maxLength": max })
}

fn pattern(pattern: &str, max: usize) -> Value {
    json!({ "pattern": pattern, "maxLength": max })
}

fn text(max: usize) -> Value {
    json!({ "pattern": TEXT, "minLength": 1, "maxLength": max })
}

fn line(max: usize) -> Value {
    json!({ "pattern": LINE, "minLength": 1, "maxLength": max })
}

fn one_of(values: &[&str]) -> Value {
    json!({ "enum": values })
}

fn email() -> Value {
    json!({ "pattern": EMAIL, "minLength": 3, "maxLength": 254 })
}

fn secret() -> Value {
    json!({ "pattern": SECRET, "minLength": crate::vault::MIN_SECRET_BYTES, "maxLength": crate::vault::MAX_SECRET_BYTES })
}

fn identifier() -> Value {
    pattern(IDENTIFIER, 128)
}

fn rfc3339() -> Value {
    json!({ "pattern": RFC3339, "maxLength": 40 })
}

/// `(schema, property)` of a request body and what it admits.
fn properties() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("InviteRequest", "email", email()),
        ("InviteRequest", "role", one_of(&["admin", "member", "auditor"])),
        ("RoleChange", "role", one_of(&["admin", "member", "auditor"])),
        ("SubmitRequest", "workspace_id", identifier()),
        ("SubmitRequest", "subdomain", pattern(SUBDOMAIN, 63)),
        ("SubmitRequest", "message", text(MAX_MESSAGE_CHARS)),
        ("ReviewInput", "reason", json!({ "pattern": OPTIONAL_TEXT, "maxLength": MAX_REASON_CHARS })),
        ("TrustRuleInput", "email", email()),
        ("TrustRuleInput", "blueprint_key", identifier()),
        ("TrustRuleInput", "description", json!({ "pattern": OPTIONAL_TEXT, "maxLength": MAX_REASON_CHARS })),
        ("MintBody", "workspace", identifier()),
        ("MintBody", "owner", email()),
        ("MintBody", "blueprint_key", identifier()),
        ("MintBody", "display_name", line(100)),
        ("MintBody", "name", line(100)),
        ("LaunchBody", "blueprint_key", identifier()),
        ("LaunchBody", "name", line(domain::workspace::MAX_NAME_CHARS)),
        ("RenameBody", "name", line(domain::workspace::MAX_NAME_CHARS)),
        ("TagInput", "name", line(domain::tags::MAX_TAG_NAME_CHARS)),
        ("TicketBody", "kind", one_of(&["terminal", "preview"])),
        // The default preview_min_port..preview_max_port; the served document has the configured range
        // (`preview_ports`).
        (
            "TicketBody",
            "port",
            json!({
                "minimum": relay::preview::PreviewLimits::default().min_port,
                "maximum": relay::preview::PreviewLimits::default().max_port,
            }),
        ),
        ("FirewallRule", "cidr", pattern(CIDR, 43)),
        (
            "FirewallRule",
            "description",
            json!({ "pattern": OPTIONAL_LINE, "maxLength": domain::firewall::MAX_DESCRIPTION_CHARS }),
        ),
        ("FirewallBody", "rules", json!({ "maxItems": domain::firewall::MAX_RULES })),
        ("RegisterBlueprint", "key", pattern(NEW_KEY, 128)),
        ("RegisterBlueprint", "display_name", line(blueprint::MAX_DISPLAY_NAME_CHARS)),
        (
            "RegisterBlueprint",
            "description",
            json!({ "pattern": OPTIONAL_TEXT, "maxLength": blueprint::MAX_DESCRIPTION_CHARS }),
        ),
        ("RegisterBlueprint", "target_cluster", blank_or(IDENTIFIER, 128)),
        ("RegisterBlueprint", "primary_service", blank_or(IDENTIFIER, 128)),
        ("RegisterBlueprint", "project_mode", one_of(&["dedicated", "shared"])),
        ("DetailsPatch", "display_name", line(blueprint::MAX_DISPLAY_NAME_CHARS)),
        (
            "DetailsPatch",
            "description",
            json!({ "pattern": OPTIONAL_TEXT, "maxLength": blueprint::MAX_DESCRIPTION_CHARS }),
        ),
        ("DetailsPatch", "target_cluster", blank_or(IDENTIFIER, 128)),
        ("DetailsPatch", "primary_service", blank_or(IDENTIFIER, 128)),
        ("DetailsPatch", "project_mode", one_of(&["dedicated", "shared"])),
        ("SourceInput", "kind", one_of(&["local"])),
        ("SourceInput", "repository", pattern(REPOSITORY, blueprint::MAX_REPOSITORY_CHARS)),
        ("SourceInput", "branch", pattern(BRANCH, blueprint::MAX_BRANCH_CHARS)),
        ("SourceInput", "dev_command", json!({ "pattern": OPTIONAL_LINE, "maxLength": blueprint::MAX_COMMAND_CHARS })),
        ("SourceInput", "shell", blank_or(SHELL, blueprint::MAX_SHELL_CHARS)),
        (
            "SourceInput",
            "preview_ports",
            json!({ "maxItems": blueprint::MAX_PREVIEW_PORTS, "uniqueItems": true,
                    "items": { "minimum": 1, "maximum": 65535 } }),
        ),
        ("NamingInput", "project", pattern(NAME_TEMPLATE, domain::blueprint::MAX_TEMPLATE_CHARS)),
        ("NamingInput", "environment", pattern(NAME_TEMPLATE, domain::blueprint::MAX_TEMPLATE_CHARS)),
        ("StateInput", "state", one_of(&["testing", "enabled", "disabled"])),
        ("AclInput", "rules", json!({ "maxItems": domain::blueprint::MAX_ACL_RULES, "uniqueItems": true })),
        ("WorkspaceInput", "tabs", json!({ "maxItems": blueprint::MAX_TABS, "uniqueItems": true })),
        ("BrandingInput", "name", line(portal::MAX_NAME_CHARS)),
        ("BrandingInput", "accent_color", pattern(r"^#[0-9A-Fa-f]{6}$", 7)),
        ("WelcomeInput", "title", line(portal::MAX_NAME_CHARS)),
        ("WelcomeInput", "description", text(portal::MAX_WELCOME_DESCRIPTION_CHARS)),
        ("WelcomeInput", "cta", line(portal::MAX_NAME_CHARS)),
        (
            "LimitsInput",
            "running_workspaces_per_user",
            json!({ "minimum": 1, "maximum": portal::MAX_RUNNING_WORKSPACES }),
        ),
        ("LimitsInput", "launches_per_minute", json!({ "minimum": 1, "maximum": portal::MAX_LAUNCHES_PER_MINUTE })),
        (
            "LimitsInput",
            "api_requests_per_minute",
            json!({ "minimum": 1, "maximum": portal::MAX_API_REQUESTS_PER_MINUTE }),
        ),
        ("OrgInput", "name", line(blueprint::MAX_DISPLAY_NAME_CHARS)),
        ("OrgInput", "admin_api_token", secret()),
        ("ControlPlaneInput", "kind", one_of(&["local"])),
        ("GitInput", "provider", one_of(&["local", "github", "gitlab"])),
        ("GitInput", "base_url", blank_or(ENDPOINT, blueprint::MAX_ENDPOINT_CHARS)),
        ("CredentialInput", "value", secret()),
        ("AnthropicInput", "auth_mode", one_of(&["api_key", "user_oauth"])),
        ("AnthropicInput", "model", pattern(MODEL, blueprint::MAX_MODEL_CHARS)),
        ("AnthropicInput", "api_key", secret()),
        ("OpenAiInput", "auth_mode", one_of(&["api_key"])),
        ("OpenAiInput", "model", pattern(MODEL, blueprint::MAX_MODEL_CHARS)),
        ("OpenAiInput", "api_key", secret()),
        ("CustomAiInput", "auth_mode", one_of(&["api_key"])),
        ("CustomAiInput", "model", pattern(MODEL, blueprint::MAX_MODEL_CHARS)),
        ("CustomAiInput", "endpoint", pattern(ENDPOINT, blueprint::MAX_ENDPOINT_CHARS)),
        ("CustomAiInput", "api_key", secret()),
    ]
}

/// `(path, parameter)` (`*` for any path) and what it admits; the first match wins.
fn parameters() -> Vec<(&'static str, &'static str, Value)> {
    let list_filters = [
        "/api/v1/approvals",
        "/api/v1/publish-requests",
        "/api/v1/sessions",
        "/api/v1/relay/activity",
        "/api/v1/workspaces",
    ];
    let mut rules = vec![
        ("/api/v1/members/{email}", "email", email()),
        ("/api/v1/members", "after", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("/api/v1/blueprints", "after", identifier()),
        ("/api/v1/trust-rules", "after", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("*", "key", identifier()),
        ("*", "blueprint_key", identifier()),
        ("*", "workspace_id", identifier()),
        ("*", "workspace", identifier()),
        ("*", "email", email()),
        ("*", "builder", email()),
        ("*", "user", email()),
        ("*", "actor", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("*", "from", rfc3339()),
        ("*", "to", rfc3339()),
        ("*", "at_time", rfc3339()),
        ("*", "at", pattern(LOG_CURSOR, 42)),
        ("*", "since", pattern(LOG_CURSOR, 42)),
        ("/api/v1/events", "after", pattern(LOG_CURSOR, 42)),
        ("/api/v1/stream", "after", pattern(LOG_CURSOR, 42)),
        ("/api/v1/workspaces/{id}/provisioning", "after", pattern(LOG_CURSOR, 42)),
        ("/api/v1/events", "aggregate_type", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("*", "aggregate_type", pattern(AGGREGATE_TYPE, 64)),
        ("*", "aggregate_id", pattern(PRINTABLE, 256)),
        ("*", "event_type", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("/api/v1/agent-tokens/{id}", "id", pattern(TOKEN_ID, 64)),
        ("/api/v1/org/credentials/{name}", "name", one_of(&["admin_api_token", "git_token"])),
        ("/api/v1/portal/logos/{variant}", "variant", one_of(&["light", "dark"])),
        ("/api/v1/aggregates/{aggregate_type}/{aggregate_id}/events", "after", json!({ "maximum": u64::MAX })),
        ("/api/v1/audit/checkpoints", "after", json!({ "minimum": i64::MIN, "maximum": i64::MAX })),
        ("/api/v1/trust-rules/{id}", "id", pattern(PRINTABLE, 512)),
        ("*", "id", identifier()),
        ("*", "Idempotency-Key", pattern(IDEMPOTENCY_KEY, 255)),
        ("/api/v1/publish-requests", "status", one_of(&["pending", "approved", "rejected", "withdrawn", "expired"])),
        ("/api/v1/sessions", "active", one_of(&["true", "false"])),
        ("/api/v1/workspaces", "status", one_of(&["running", "stopped", "deploying", "error"])),
        ("/api/v1/workspaces", "owner", email()),
        ("/api/v1/workspaces", "q", line(100)),
        ("/api/v1/workspaces", "tag", pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)),
        ("*", "tag", identifier()),
        ("/api/v1/sessions", "kind", one_of(&["terminal", "preview"])),
        (
            "/api/v1/relay/activity",
            "kind",
            one_of(&["ticket_issued", "ticket_redeemed", "ticket_refused", "connection_blocked"]),
        ),
    ];
    // A list's filters are compared, not parsed: any one line.
    for path in list_filters {
        for name in ["blueprint_key", "workspace_id", "workspace"] {
            rules.insert(0, (path, name, pattern(PRINTABLE, crate::extract::MAX_QUERY_VALUE_CHARS)));
        }
    }
    for path in ["/api/v1/approvals", "/api/v1/publish-requests"] {
        rules.insert(0, (path, "after", pattern(REQUEST_CURSOR, 160)));
    }
    for path in ["/api/v1/sessions", "/api/v1/relay/activity", "/api/v1/workspaces"] {
        rules.insert(0, (path, "after", pattern(TIME_CURSOR, 330)));
    }
    rules
}

/// Writes the limits into `document`.
pub(crate) fn constrain(document: &mut utoipa::openapi::OpenApi) {
    let Ok(mut value) = serde_json::to_value(&*document) else {
        tracing::error!("the OpenAPI document does not serialize; its limits are not written");
        return;
    };
    constrain_value(&mut value);
    match serde_json::from_value(value) {
        Ok(constrained) => *document = constrained,
        Err(error) => tracing::error!(%error, "the constrained OpenAPI document does not deserialize"),
    }
}

/// Writes the configured range of preview ports (`preview_min_port`..`preview_max_port`) into the document.
pub(crate) fn preview_ports(document: &mut utoipa::openapi::OpenApi, min: u16, max: u16) {
    let Ok(mut value) = serde_json::to_value(&*document) else { return };
    if let Some(branches) = value["components"]["schemas"]["TicketBody"]["oneOf"].as_array_mut() {
        for branch in branches {
            let port = &mut branch["properties"]["port"];
            if port.is_object() {
                merge(port, &json!({ "minimum": min, "maximum": max }));
            }
        }
    }
    if let Ok(configured) = serde_json::from_value(value) {
        *document = configured;
    }
}

fn merge(target: &mut Value, limits: &Value) {
    if let (Some(target), Some(limits)) = (target.as_object_mut(), limits.as_object()) {
        for (key, value) in limits {
            match (target.get_mut(key), key.as_str()) {
                (Some(existing), "items") => merge(existing, value),
                _ => {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

fn constrain_value(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    for (schema, property, limits) in properties() {
        let target = &mut schemas[schema]["properties"][property];
        if target.is_object() {
            merge(target, &limits);
        }
    }
    schemas["FirewallRule"]["additionalProperties"] = json!(false);
    acl_rule_by_type(schemas);
    tab_by_kind(schemas);
    ticket_by_kind(schemas);
    // A locked layout needs a tab (utoipa's object schema has no `anyOf` of its own: an `allOf` carries it).
    let layout = schemas["WorkspaceInput"].clone();
    schemas["WorkspaceInput"] = json!({ "allOf": [layout, { "anyOf": [
        { "type": "object", "properties": { "lock_layout": { "type": "boolean", "enum": [false] } } },
        { "type": "object", "properties": { "tabs": {
            "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/TabInput" } } } },
    ] }] });
    ai_keys(schemas);
    // The local provider has no API, so no base URL.
    let git = schemas["GitInput"].clone();
    schemas["GitInput"] = json!({ "allOf": [git, { "anyOf": [
        { "type": "object", "properties": { "provider": { "type": "string", "enum": ["github", "gitlab"] } } },
        { "type": "object", "properties": { "base_url": { "type": ["string", "null"], "pattern": "^[ \\t\\n\\r]*$" } } },
    ] }] });
    // Logos travel as raw images (utoipa writes a byte array as an array of integers).
    for pointer in ["/put/requestBody/content", "/get/responses/200/content"] {
        let logos = &mut document["paths"]["/api/v1/portal/logos/{variant}"];
        let content = logos.pointer_mut(pointer).and_then(Value::as_object_mut);
        for media in content.into_iter().flat_map(|media| media.values_mut()) {
            media["schema"] = json!({ "type": "string", "format": "binary" });
        }
    }
    let rules = parameters();
    let Some(paths) = document["paths"].as_object_mut() else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            let Some(parameters) = operation["parameters"].as_array_mut() else { continue };
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_string();
                let rule = rules.iter().find(|(p, n, _)| (*p == "*" || p == path) && *n == name);
                if let Some((.., limits)) = rule {
                    let optional_query = parameter["in"] == "query" && parameter["required"] != true;
                    let limits = if optional_query { empty_allowed(limits) } else { limits.clone() };
                    merge(&mut parameter["schema"], &limits);
                }
            }
        }
    }
}

/// An enabled provider on auth mode `api_key` keeps a key: `api_key: null` (remove it) only when disabled or, for
/// Anthropic, on `user_oauth`. (Left out, the stored key is kept; none stored is 409 `api_key_required`.)
fn ai_keys(schemas: &mut Value) {
    for (schema, oauth) in [("AnthropicInput", true), ("OpenAiInput", false), ("CustomAiInput", false)] {
        let mut ways = vec![
            json!({ "type": "object", "properties": { "enabled": { "type": "boolean", "enum": [false] } } }),
            json!({ "type": "object", "properties": { "api_key": {
                "type": "string", "pattern": SECRET, "minLength": crate::vault::MIN_SECRET_BYTES, "maxLength": crate::vault::MAX_SECRET_BYTES } } }),
        ];
        if oauth {
            ways.push(json!({ "type": "object", "required": ["auth_mode"],
                               "properties": { "auth_mode": { "type": "string", "enum": ["user_oauth"] } } }));
        }
        let input = schemas[schema].clone();
        schemas[schema] = json!({ "allOf": [input, { "anyOf": ways }] });
    }
}

/// A query parameter given empty counts as absent: its limits admit "" too.
fn empty_allowed(limits: &Value) -> Value {
    let mut limits = limits.clone();
    if let Some(pattern) = limits["pattern"].as_str() {
        let inner = pattern.trim_start_matches('^').trim_end_matches('$');
        limits["pattern"] = json!(format!("^(?:|{inner})$"));
    }
    if let Some(limits) = limits.as_object_mut() {
        limits.remove("minLength");
    }
    if let Some(values) = limits["enum"].as_array_mut() {
        values.push(json!(""));
    }
    limits
}

/// An ACL rule's value is an address or a domain as its type says: two schemas, one per type.
fn acl_rule_by_type(schemas: &mut Value) {
    let rule = |kind: &str, value: Value| {
        json!({
            "type": "object",
            "required": ["type", "value"],
            "additionalProperties": false,
            "properties": { "type": { "type": "string", "enum": [kind] }, "value": value },
        })
    };
    let mut domain = pattern(DOMAIN, 253);
    merge(&mut domain, &json!({ "type": "string" }));
    let mut address = email();
    merge(&mut address, &json!({ "type": "string" }));
    let description = schemas["AclRuleInput"]["description"].clone();
    schemas["AclRuleInput"] = json!({
        "description": description,
        "oneOf": [rule("domain", domain), rule("email", address)],
    });
}

/// A terminal ticket takes no port; a preview ticket may name one (else its dev server's).
fn ticket_by_kind(schemas: &mut Value) {
    let mut port = schemas["TicketBody"]["properties"]["port"].clone();
    if let Some(port) = port.as_object_mut() {
        port.insert("type".into(), json!("integer"));
        port.remove("format");
    }
    let ticket = |kind: &str, extra: Option<Value>| {
        let mut properties = Map::new();
        properties.insert("kind".into(), json!({ "type": "string", "enum": [kind] }));
        if let Some(port) = extra {
            properties.insert("port".into(), port);
        }
        json!({ "type": "object", "required": ["kind"], "additionalProperties": false, "properties": properties })
    };
    let description = schemas["TicketBody"]["description"].clone();
    schemas["TicketBody"] =
        json!({ "description": description, "oneOf": [ticket("terminal", None), ticket("preview", Some(port))] });
}

/// A custom tab names its command and label; the built-in tabs name neither.
fn tab_by_kind(schemas: &mut Value) {
    let Some(properties) = schemas["TabInput"]["properties"].as_object().cloned() else { return };
    let mut command = properties.get("command").cloned().unwrap_or_else(|| json!({}));
    merge(&mut command, &line(blueprint::MAX_COMMAND_CHARS));
    merge(&mut command, &json!({ "type": "string" }));
    let mut name = properties.get("name").cloned().unwrap_or_else(|| json!({}));
    merge(&mut name, &line(blueprint::MAX_TAB_NAME_CHARS));
    merge(&mut name, &json!({ "type": "string" }));
    let mut custom = Map::new();
    custom.insert("kind".into(), json!({ "type": "string", "enum": ["custom"] }));
    custom.insert("name".into(), name);
    custom.insert("command".into(), command);
    let description = schemas["TabInput"]["description"].clone();
    schemas["TabInput"] = json!({
        "description": description,
        "oneOf": [
            {
                "type": "object",
                "required": ["kind"],
                "additionalProperties": false,
                "properties": { "kind": { "type": "string", "enum": ["chat", "claude_code", "terminal"] } },
            },
            { "type": "object", "required": ["kind", "name", "command"], "additionalProperties": false,
              "properties": custom },
        ],
    });
}
