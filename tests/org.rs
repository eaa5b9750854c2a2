//! The organisation (`/api/v1/org`), its write-only credentials, blueprints' AI keys and the secrets key ring
//! (`/api/v1/admin/secrets`, `gatehouse secrets`) through a real `gatehouse serve` process, on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{gatehouse, issue_token, send, Api, Server};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

const ADMIN_TOKEN: &str = "qovSECRETtoken9f3b1c";
const GIT_TOKEN: &str = "ghpSECRETgit7d2e4410";
const AI_KEY: &str = "skantSECRETai5a6b77";

fn org(name: &str) -> Value {
    json!({"name": name, "control_plane": {"kind": "local"}})
}

fn registration(key: &str) -> Value {
    json!({
        "key": key,
        "display_name": format!("The {key} blueprint"),
        "source": {"kind": "local", "repository": "https://git.example.com/web.git", "branch": "main"},
    })
}

fn key_file(dir: &Path, keys: &[&str]) -> std::path::PathBuf {
    let path = dir.join("secrets.keys");
    std::fs::write(&path, keys.join("\n") + "\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn key_id(key: &str) -> String {
    secrets::KeyRing::parse(key).unwrap().primary_key_id().to_string()
}

fn new_key() -> String {
    secrets::generate_key().unwrap().expose().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_org_is_configured_and_its_credentials_are_write_only() {
    for db in TestDb::all("org setup").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let (status, etag, view) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        assert_eq!((status, etag.as_deref()), (200, Some("\"0\"")), "{backend}: {view}");
        assert_eq!(view["configured"], false);
        assert_eq!(view["credentials"][0], json!({"name": "admin_api_token", "set": false}));

        // Credentials need a configured organisation.
        let git = json!({"value": GIT_TOKEN});
        let (status, _, problem) =
            send(&api, Method::PUT, "/api/v1/org/credentials/git_token", Some(&root), Some(git.clone()), None).await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("org_not_configured")), "{backend}: {problem}");

        let mut setup = org("Acme");
        setup["admin_api_token"] = json!(ADMIN_TOKEN);
        let (status, etag, _) = send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(setup), None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"2\"")), "{backend}: configured and token set");
        let (_, _, view) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        assert_eq!(view["configured"], true, "{backend}: {view}");
        assert_eq!(view["name"], "Acme");
        assert_eq!(view["control_plane"], json!({"kind": "local"}));
        assert_eq!(view["git"], json!({"provider": "local"}));
        assert_eq!(view["credentials"][0], json!({"name": "admin_api_token", "set": true, "last_four": "3b1c"}));
        assert!(!view.to_string().contains(ADMIN_TOKEN), "{backend}: the token is never shown");

        // The same profile again records nothing; a stale If-Match is 412; a change moves the version.
        let (status, etag, _) = send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(org("Acme")), None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"2\"")), "{backend}: idempotent");
        let (status, _, problem) =
            send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(org("Acme Corp")), Some("\"1\"")).await;
        assert_eq!((status, problem["code"].as_str()), (412, Some("stale_version")), "{backend}: {problem}");
        let mut github = org("Acme Corp");
        github["git"] = json!({"provider": "github", "base_url": "https://ghe.acme.test/api/v3"});
        let (status, etag, _) = send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(github), Some("\"2\"")).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"3\"")), "{backend}");

        let (status, etag, _) =
            send(&api, Method::PUT, "/api/v1/org/credentials/git_token", Some(&root), Some(git), None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"4\"")), "{backend}");
        let (_, _, view) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        assert_eq!(view["git"], json!({"provider": "github", "base_url": "https://ghe.acme.test/api/v3"}));
        assert_eq!(view["credentials"][1], json!({"name": "git_token", "set": true, "last_four": "4410"}));
        let (status, ..) =
            send(&api, Method::DELETE, "/api/v1/org/credentials/git_token", Some(&root), None, None).await;
        assert_eq!(status, 204, "{backend}");
        let (status, etag, _) =
            send(&api, Method::DELETE, "/api/v1/org/credentials/git_token", Some(&root), None, None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"5\"")), "{backend}: cleared already: nothing recorded");
        let (status, ..) = send(&api, Method::DELETE, "/api/v1/org/credentials/ssh_key", Some(&root), None, None).await;
        assert_eq!(status, 404, "{backend}: no such credential");

        // `null` clears the admin token in the setup form; absent keeps it.
        let mut cleared = org("Acme Corp");
        cleared["git"] = json!({"provider": "github", "base_url": "https://ghe.acme.test/api/v3"});
        cleared["admin_api_token"] = Value::Null;
        assert_eq!(send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(cleared), None).await.0, 204);
        let (_, _, view) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        assert_eq!(view["credentials"][0], json!({"name": "admin_api_token", "set": false}), "{backend}");

        // Bad input: a 422 naming the field, and nothing recorded.
        let (_, before, _) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        let with = |field: &str, value: Value| {
            let mut body = org("Acme Corp");
            let mut target = &mut body;
            let parts: Vec<&str> = field.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                if target.get(*part).is_none() {
                    target[*part] = json!({"provider": "local"});
                }
                target = &mut target[*part];
            }
            target[parts[parts.len() - 1]] = value;
            body
        };
        let long = "x".repeat(3001);
        let cases = [
            ("name", with("name", json!("  ")), "name"),
            ("name", with("name", json!("a\u{0}b")), "name"),
            ("name", with("name", json!("x".repeat(101))), "name"),
            ("kind", with("control_plane.kind", json!("qovery")), "control_plane.kind"),
            ("provider", with("git.provider", json!("bitbucket")), "git.provider"),
            ("base_url", with("git.base_url", json!("https://x.test")), "git.base_url"),
            (
                "base_url",
                json!({"name": "A", "control_plane": {"kind": "local"},
                                "git": {"provider": "gitlab", "base_url": "ftp://x"}}),
                "git.base_url",
            ),
            ("token", with("admin_api_token", json!("abc")), "admin_api_token"),
            ("token", with("admin_api_token", json!("abc def")), "admin_api_token"),
            ("token", with("admin_api_token", json!("abcd\u{0}")), "admin_api_token"),
            ("token", with("admin_api_token", json!(long)), "admin_api_token"),
        ];
        for (what, body, field) in cases {
            let (status, _, problem) = send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(body), None).await;
            assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{backend}: {what}: {problem}");
            assert!(!problem.to_string().contains("abcd"), "{backend}: a refused secret is not echoed: {problem}");
        }
        let (status, _, problem) =
            send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(json!({"name": "A"})), None).await;
        assert_eq!(status, 400, "{backend}: a missing control plane: {problem}");
        let huge = json!({"value": "x".repeat(300 * 1024)});
        let (status, ..) =
            send(&api, Method::PUT, "/api/v1/org/credentials/admin_api_token", Some(&root), Some(huge), None).await;
        assert_eq!(status, 413, "{backend}: a huge body");
        let (_, after, _) = send(&api, Method::GET, "/api/v1/org", Some(&root), None, None).await;
        assert_eq!(before, after, "{backend}: nothing was recorded");

        // Auditors see the history with every ciphertext replaced.
        let (status, _, events) =
            send(&api, Method::GET, "/api/v1/aggregates/org/org/events", Some(&root), None, None).await;
        assert_eq!(status, 200, "{backend}: {events}");
        let text = events.to_string();
        assert!(text.contains("[sealed]") && !text.contains("ghs1:"), "{backend}: {text}");
        let (status, _, state) =
            send(&api, Method::GET, "/api/v1/aggregates/org/org/state", Some(&root), None, None).await;
        assert_eq!(status, 200, "{backend}: {state}");
        assert!(!state.to_string().contains("ghs1:"), "{backend}: {state}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_callers_role() {
    for db in TestDb::all("org authorization").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let audra = issue_token(&db, "audra@example.com", "auditor", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        assert_eq!(
            send(&api, Method::POST, "/api/v1/blueprints", Some(&root), Some(registration("web")), None).await.0,
            201
        );
        let mut setup = org("Acme");
        setup["admin_api_token"] = json!(ADMIN_TOKEN);
        let routes: Vec<(Method, &str, Option<Value>, u16)> = vec![
            (Method::GET, "/api/v1/org", None, 200),
            (Method::PUT, "/api/v1/org", Some(setup), 204),
            (Method::PUT, "/api/v1/org/credentials/git_token", Some(json!({"value": GIT_TOKEN})), 204),
            (Method::DELETE, "/api/v1/org/credentials/git_token", None, 204),
            (
                Method::PUT,
                "/api/v1/blueprints/web/ai/anthropic",
                Some(json!({"enabled": true, "model": "claude-sonnet-4", "api_key": AI_KEY})),
                204,
            ),
            (Method::PUT, "/api/v1/blueprints/web/ai/openai", Some(json!({"enabled": false, "model": "gpt-4o"})), 204),
            (
                Method::PUT,
                "/api/v1/blueprints/web/ai/custom",
                Some(json!({"enabled": false, "model": "m", "endpoint": "https://llm.acme.test/v1"})),
                204,
            ),
            (Method::DELETE, "/api/v1/blueprints/web/ai/custom", None, 204),
            (Method::GET, "/api/v1/admin/secrets", None, 200),
            (Method::POST, "/api/v1/admin/secrets/rewrap", None, 200),
        ];
        for (method, path, body, ok) in routes {
            let read_only = method == Method::GET;
            let expected = [
                (None, 401),
                (Some(&ada), 403),
                (Some(&bob), 403),
                (Some(&audra), if read_only { 200 } else { 403 }),
                (Some(&root), ok),
            ];
            for (token, status) in expected {
                let (got, _, answer) =
                    send(&api, method.clone(), path, token.map(String::as_str), body.clone(), None).await;
                assert_eq!(got, status, "{backend}: {method} {path} as {token:?}: {answer}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_keys_are_sealed_kept_and_refused_as_documented() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    assert_eq!(
        send(&api, Method::POST, "/api/v1/blueprints", Some(&root), Some(registration("web")), None).await.0,
        201
    );
    let put = |provider: &str, body: Value| {
        let api = api.clone();
        let root = root.clone();
        let path = format!("/api/v1/blueprints/web/ai/{provider}");
        async move { send(&api, Method::PUT, &path, Some(&root), Some(body), None).await }
    };
    let ai = |view: &Value, provider: &str| {
        view["ai_providers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["provider"] == provider)
            .cloned()
            .unwrap_or(Value::Null)
    };

    let (status, ..) = put("anthropic", json!({"enabled": true, "model": "claude-sonnet-4", "api_key": AI_KEY})).await;
    assert_eq!(status, 204);
    let (_, _, view) = send(&api, Method::GET, "/api/v1/blueprints/web", Some(&root), None, None).await;
    assert_eq!(ai(&view, "anthropic")["api_key_last_four"], "6b77", "{view}");
    assert!(!view.to_string().contains(AI_KEY) && !view.to_string().contains("ghs1:"), "{view}");
    // A model change without the key keeps it.
    assert_eq!(put("anthropic", json!({"enabled": true, "model": "claude-opus-4"})).await.0, 204);
    let (_, _, view) = send(&api, Method::GET, "/api/v1/blueprints/web", Some(&root), None, None).await;
    assert_eq!(ai(&view, "anthropic")["model"], "claude-opus-4");
    assert_eq!(ai(&view, "anthropic")["api_key_last_four"], "6b77", "{view}");
    // Removing the key of an enabled provider on api_key is refused; on user_oauth it goes.
    let (status, _, problem) = put("anthropic", json!({"enabled": true, "model": "m", "api_key": null})).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("api_key")), "{problem}");
    let body = json!({"enabled": true, "auth_mode": "user_oauth", "model": "m", "api_key": null});
    assert_eq!(put("anthropic", body).await.0, 204);
    let (_, _, view) = send(&api, Method::GET, "/api/v1/blueprints/web", Some(&root), None, None).await;
    assert_eq!(ai(&view, "anthropic")["api_key_last_four"], Value::Null, "{view}");

    // Enabled on api_key with no key stored: 409 api_key_required.
    let (status, _, problem) = put("openai", json!({"enabled": true, "model": "gpt-4o"})).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("api_key_required")), "{problem}");
    let cases = [
        (
            "openai",
            json!({"enabled": true, "auth_mode": "user_oauth", "model": "gpt-4o", "api_key": AI_KEY}),
            "auth_mode",
        ),
        ("openai", json!({"enabled": false, "model": " gpt-4o"}), "model"),
        ("openai", json!({"enabled": false, "model": "gpt 4o"}), "model"),
        ("openai", json!({"enabled": false, "model": "gpt-4o", "api_key": "sk x"}), "api_key"),
        ("custom", json!({"enabled": false, "model": "m", "endpoint": "llm.acme.test"}), "endpoint"),
        ("custom", json!({"enabled": false, "model": "m", "endpoint": "https://"}), "endpoint"),
    ];
    for (provider, body, field) in cases {
        let (status, _, problem) = put(provider, body.clone()).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{provider} {body}: {problem}");
    }
    let (status, ..) = put("custom", json!({"enabled": false, "model": "m"})).await;
    assert_eq!(status, 400, "the custom provider's endpoint is required");
    let (status, ..) = put("mistral", json!({"enabled": false, "model": "m"})).await;
    assert_eq!(status, 404, "no such provider route");
    let (status, _, problem) =
        send(&api, Method::DELETE, "/api/v1/blueprints/web/ai/openai", Some(&root), None, None).await;
    assert_eq!(status, 204, "not configured: nothing to clear, nothing recorded: {problem}");
    let (status, ..) = send(&api, Method::DELETE, "/api/v1/blueprints/web/ai/mistral", Some(&root), None, None).await;
    assert_eq!(status, 404);
    let (status, ..) = send(&api, Method::DELETE, "/api/v1/blueprints/web/ai/anthropic", Some(&root), None, None).await;
    assert_eq!(status, 204);
    let (_, _, view) = send(&api, Method::GET, "/api/v1/blueprints/web", Some(&root), None, None).await;
    assert_eq!(ai(&view, "anthropic"), Value::Null, "{view}");
    let (status, ..) = send(
        &api,
        Method::PUT,
        "/api/v1/blueprints/none/ai/openai",
        Some(&root),
        Some(json!({"enabled": false, "model": "m"})),
        None,
    )
    .await;
    assert_eq!(status, 404, "no such blueprint");
}

/// Every table's rows as text (PostgreSQL), or every file of the data directory (SQLite, WAL included).
async fn stored_text(db: &TestDb) -> String {
    if db.backend() == "postgres" {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema, table_name FROM information_schema.tables
              WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let mut text = String::new();
        for (schema, table) in tables {
            let sql = format!(
                "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM \"{schema}\".\"{table}\" t"
            );
            let rows: String = sqlx::query_scalar(&sql).fetch_one(&mut connection).await.unwrap();
            text.push_str(&rows);
        }
        text
    } else {
        let mut text = String::new();
        for entry in std::fs::read_dir(&db.data_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                text.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
            }
        }
        text
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_a_response_a_log_line_or_a_stored_row() {
    for db in TestDb::all("secret scan").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let audra = issue_token(&db, "audra@example.com", "auditor", "1h");
        let server = Server::start(&db, &[("GATEHOUSE_LOG", "debug,sqlx=debug")]);
        let api = Api::new(&server);
        let backend = db.backend();
        let mut responses = String::new();
        let mut setup = org("Acme");
        setup["admin_api_token"] = json!(ADMIN_TOKEN);
        let writes = [
            (Method::PUT, "/api/v1/org", setup),
            (Method::PUT, "/api/v1/org/credentials/git_token", json!({"value": GIT_TOKEN})),
            (Method::POST, "/api/v1/blueprints", registration("web")),
            (
                Method::PUT,
                "/api/v1/blueprints/web/ai/anthropic",
                json!({"enabled": true, "model": "m", "api_key": AI_KEY}),
            ),
            // Refused writes carrying secrets, too.
            (
                Method::PUT,
                "/api/v1/blueprints/web/ai/openai",
                json!({"enabled": true, "auth_mode": "user_oauth", "model": "m", "api_key": AI_KEY}),
            ),
            (Method::PUT, "/api/v1/org/credentials/admin_api_token", json!({"value": ADMIN_TOKEN, "extra": 1})),
        ];
        for (method, path, body) in writes {
            let (status, _, answer) = send(&api, method.clone(), path, Some(&root), Some(body), None).await;
            assert!(status < 500, "{backend}: {method} {path}: {answer}");
            responses.push_str(&answer.to_string());
        }
        assert_eq!(send(&api, Method::POST, "/api/v1/admin/secrets/rewrap", Some(&root), None, None).await.0, 200);
        for path in [
            "/api/v1/org",
            "/api/v1/blueprints/web",
            "/api/v1/blueprints",
            "/api/v1/admin/secrets",
            "/api/v1/events?limit=500",
            "/api/v1/aggregates/org/org/events",
            "/api/v1/aggregates/org/org/state",
            "/api/v1/aggregates/blueprint/web/events",
            "/api/v1/aggregates/blueprint/web/state",
            "/metrics",
        ] {
            for token in [&root, &audra] {
                let (status, _, answer) = send(&api, Method::GET, path, Some(token), None, None).await;
                assert!(status < 500, "{backend}: {path}: {answer}");
                responses.push_str(&answer.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logs = server.drain_logs().join("\n");
        drop(server);
        let stored = stored_text(&db).await;
        assert!(stored.contains("ghs1:"), "{backend}: the scan sees the stored ciphertexts");
        for secret in [ADMIN_TOKEN, GIT_TOKEN, AI_KEY] {
            assert!(!responses.contains(secret), "{backend}: {secret} in a response");
            assert!(!logs.contains(secret), "{backend}: {secret} in the log");
            assert!(!stored.contains(secret), "{backend}: {secret} stored in clear");
        }
        assert!(!responses.contains("ghs1:"), "{backend}: a ciphertext in a response");
        assert!(!logs.contains("ghs1:"), "{backend}: a ciphertext in the log");
    }
}

/// Rotation without a restart, under load: requests that open secrets keep succeeding while a new key is added,
/// every secret is rewrapped and the old key is dropped; a ring lacking a key in use is refused at start.
#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_online_under_load_and_a_missing_key_stops_the_start() {
    for db in TestDb::all("key rotation").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let keys = tempfile::tempdir().unwrap();
        let (old, new) = (new_key(), new_key());
        let file = key_file(keys.path(), &[&old]);
        let file_env = file.to_str().unwrap().to_string();
        let server = Server::start(&db, &[("GATEHOUSE_SECRETS_KEY_FILE", &file_env)]);
        let api = Api::new(&server);
        let mut setup = org("Acme");
        setup["admin_api_token"] = json!(ADMIN_TOKEN);
        assert_eq!(send(&api, Method::PUT, "/api/v1/org", Some(&root), Some(setup), None).await.0, 204);
        for index in 0..8 {
            let key = format!("bp{index}");
            assert_eq!(
                send(&api, Method::POST, "/api/v1/blueprints", Some(&root), Some(registration(&key)), None).await.0,
                201
            );
            let body = json!({"enabled": true, "model": "m", "api_key": format!("{AI_KEY}{index}")});
            let path = format!("/api/v1/blueprints/{key}/ai/anthropic");
            assert_eq!(send(&api, Method::PUT, &path, Some(&root), Some(body), None).await.0, 204);
        }

        // The new key goes first in the file; the old one stays after it.
        key_file(keys.path(), &[&new, &old]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for worker in 0..3 {
            let (api, root, stop) = (api.clone(), root.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let mut calls = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || calls < 5 {
                    let (status, _, status_view) =
                        send(&api, Method::GET, "/api/v1/admin/secrets", Some(&root), None, None).await;
                    assert_eq!(status, 200, "{status_view}");
                    for secret in status_view["secrets"].as_array().unwrap() {
                        assert_eq!(secret["opens"], true, "worker {worker}: {secret}");
                    }
                    // An admin replacing a key meanwhile: sealed under whatever key is primary now.
                    let body = json!({"enabled": true, "model": "m", "api_key": format!("{AI_KEY}w{worker}c{calls}")});
                    let path = format!("/api/v1/blueprints/bp{worker}/ai/anthropic");
                    let (status, _, answer) = send(&api, Method::PUT, &path, Some(&root), Some(body), None).await;
                    assert_eq!(status, 204, "{answer}");
                    calls += 1;
                }
                calls
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, report) =
            send(&api, Method::POST, "/api/v1/admin/secrets/rewrap", Some(&root), None, None).await;
        assert_eq!(status, 200, "{backend}: {report}");
        assert_eq!(report["primary_key_id"], key_id(&new), "{backend}: {report}");
        assert_eq!(report["failed"], json!([]), "{backend}: {report}");
        assert!(report["rewrapped"].as_u64().unwrap() >= 6, "{backend}: {report}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for worker in load {
            assert!(worker.await.unwrap() >= 5);
        }
        // Idempotent: nothing left to move.
        let (_, _, report) = send(&api, Method::POST, "/api/v1/admin/secrets/rewrap", Some(&root), None, None).await;
        assert_eq!((report["rewrapped"].as_u64(), report["already_current"].as_u64()), (Some(0), Some(9)), "{report}");
        let (_, _, view) = send(&api, Method::GET, "/api/v1/admin/secrets", Some(&root), None, None).await;
        assert_eq!(view["to_rewrap"], 0, "{backend}: {view}");

        // The old key can go now: the file loses it, SIGHUP reloads, and everything still opens.
        key_file(keys.path(), &[&new]);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.child.id() as i32), nix::sys::signal::Signal::SIGHUP)
            .unwrap();
        let reloaded = common::eventually(Duration::from_secs(10), || async {
            let (_, _, view) = send(&api, Method::GET, "/api/v1/admin/secrets", Some(&root), None, None).await;
            view["keys"].as_array().is_some_and(|keys| keys.len() == 1)
        })
        .await;
        assert!(reloaded, "{backend}: SIGHUP reloads the key file");
        let (_, _, view) = send(&api, Method::GET, "/api/v1/admin/secrets", Some(&root), None, None).await;
        assert!(view["secrets"].as_array().unwrap().iter().all(|secret| secret["opens"] == true), "{view}");
        assert_eq!(server.terminate().code(), Some(0));

        // The CLI agrees, and is idempotent too.
        let cli = |args: &[&str], keys_file: &str| {
            gatehouse()
                .args(args)
                .env("GATEHOUSE_DATABASE_URL", &db.url)
                .env("GATEHOUSE_DATA_DIR", &db.data_dir)
                .env("GATEHOUSE_SECRETS_KEY_FILE", keys_file)
                .env("GATEHOUSE_LOG", "warn")
                .output()
                .unwrap()
        };
        let status = cli(&["secrets", "status"], &file_env);
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert!(String::from_utf8_lossy(&status.stdout).contains("9 secret(s), 0 to rewrap"));
        let rewrap = cli(&["secrets", "rewrap"], &file_env);
        assert!(String::from_utf8_lossy(&rewrap.stdout).contains("0 rewrapped, 9 already current"));

        // A ring that lacks the key in use is refused at start, naming it; so is a status with it.
        let other = tempfile::tempdir().unwrap();
        let stale = key_file(other.path(), &[&old]);
        let refused = gatehouse()
            .arg("serve")
            .env("GATEHOUSE_DATABASE_URL", &db.url)
            .env("GATEHOUSE_DATA_DIR", &db.data_dir)
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_SECRETS_KEY_FILE", &stale)
            .env("GATEHOUSE_LOG", "warn")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{backend}: serve must refuse the ring");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&key_id(&new)) && stderr.contains("credentials.admin_api_token"),
            "{backend}: {stderr}"
        );
        for secret in [ADMIN_TOKEN, AI_KEY, &new, &old] {
            assert!(!stderr.contains(secret), "{backend}: no secret in the refusal");
        }
        let status = cli(&["secrets", "status"], stale.to_str().unwrap());
        assert!(!status.status.success());
        assert!(String::from_utf8_lossy(&status.stdout).contains("DOES NOT OPEN"));
    }
}
