//! The binary's behaviour on bad configuration: one clear line, a non-zero exit, never a panic.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::gatehouse;
use testkit::TestDb;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = gatehouse();
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// The process failed with exactly one line on stderr mentioning `needle`, and did not panic.
fn assert_one_line_failure(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("gatehouse: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn a_malformed_database_url_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for url in ["mysql://localhost/db", "postgres://user:pw@[::1:5432/db", "sqlite://"] {
        let output = run(&["migrate"], &[("GATEHOUSE_DATABASE_URL", url), ("GATEHOUSE_DATA_DIR", data)]);
        assert_one_line_failure(&output, "invalid database URL");
        assert!(!String::from_utf8_lossy(&output.stderr).contains(":pw@"), "the password leaked");
    }
}

#[test]
fn an_unreachable_database_is_one_clear_line() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let output = run(
        &["serve"],
        &[
            ("GATEHOUSE_DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/gatehouse"),
            ("GATEHOUSE_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_one_line_failure(&output, "the event store is unavailable");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("secret"));
}

#[test]
fn invalid_settings_are_one_clear_line() {
    let output = run(&["serve"], &[("GATEHOUSE_LOG_FORMAT", "yaml")]);
    assert_one_line_failure(&output, "invalid settings");
    assert_eq!(output.status.code(), Some(2));
    let output = run(&["--config", "/nonexistent/gatehouse.toml", "serve"], &[]);
    assert_one_line_failure(&output, "does not exist");
}

#[test]
fn a_cors_origin_that_is_not_one_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for origin in ["*", "https://portal.example.com/app", "portal.example.com"] {
        let env = [
            ("GATEHOUSE_HTTP_CORS_ALLOWED_ORIGINS", origin),
            ("GATEHOUSE_DATA_DIR", data),
            ("GATEHOUSE_LISTEN", "127.0.0.1:0"),
        ];
        let output = run(&["serve"], &env);
        assert_one_line_failure(&output, "http_cors_allowed_origins");
        assert_eq!(output.status.code(), Some(1));
    }
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    for db in TestDb::all("newer schema").await {
        let store = db.store().await;
        let future = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                      VALUES (99990101000000, 'from the future', true, '\\x00', 0)";
        match store.backend() {
            store::Backend::Postgres(pool) => sqlx::query(future).execute(pool).await.map(|_| ()).unwrap(),
            store::Backend::Sqlite(pool) => {
                sqlx::query(&future.replace("'\\x00'", "x'00'")).execute(pool).await.map(|_| ()).unwrap()
            }
        }
        store.close().await;
        let env = [("GATEHOUSE_DATABASE_URL", db.url.as_str()), ("GATEHOUSE_LISTEN", "127.0.0.1:0")];
        for command in ["serve", "migrate"] {
            let output = run(&[command], &env);
            assert_one_line_failure(&output, "newer than this binary");
        }
    }
}

#[test]
fn an_unknown_projection_is_named_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["projections", "rebuild", "nope"], &[("GATEHOUSE_DATA_DIR", dir.path().to_str().unwrap())]);
    assert_one_line_failure(
        &output,
        "known: audit_chain, members, publish_requests, trust_rules, sessions, blueprints",
    );
}
