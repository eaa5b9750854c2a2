//! Test support shared by every crate's tests: each test gets its own database.
//!
//! PostgreSQL tests read the server from `GATEHOUSE_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`), create a database named `gh_test_<uuid>` on it, and drop it when
//! done. When the variable is unset, [`TestDb::postgres`] returns `None` and prints that the test was skipped, so a
//! machine without PostgreSQL still runs everything else. `.ci/run` always sets it.
//!
//! Beside the databases: [`proxy`] cuts a connection to order, [`git_http`] is a git remote over HTTP that wants a
//! token, and [`forge`] fakes GitHub's and GitLab's pull-request APIs. Those run on threads of their own and stop
//! when dropped.

#![allow(clippy::unwrap_used)]

pub mod forge;
pub mod git_http;
pub mod proxy;
mod serve;

use std::path::PathBuf;

use sqlx::{Connection, Executor, PgConnection};
use store::{EventStore, StoreConfig};

/// The variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VARIABLE: &str = "GATEHOUSE_TEST_DATABASE_URL";

/// A database that exists for one test.
pub struct TestDb {
    /// The URL to give Gatehouse (`postgres://…/gh_test_…` or `sqlite://…`).
    pub url: String,
    /// The data directory (holds the SQLite file for the embedded backend).
    pub data_dir: PathBuf,
    admin_url: Option<String>,
    name: String,
    _dir: tempfile::TempDir,
}

impl TestDb {
    /// A fresh embedded database in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.db");
        Self {
            url: format!("sqlite://{}", file.display()),
            data_dir: dir.path().to_path_buf(),
            admin_url: None,
            name: String::new(),
            _dir: dir,
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a line saying the test was skipped) when no server is set.
    pub async fn postgres(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VARIABLE) else {
            // Written straight to stderr: the test harness captures `eprintln!` of passing tests, and a skip must
            // be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "skipped: {test} on PostgreSQL ({POSTGRES_URL_VARIABLE} is not set)"
            );
            return None;
        };
        let name = format!("gh_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        admin.execute(&*format!("CREATE DATABASE {name}")).await.unwrap();
        let url = match admin_url.rfind('/') {
            Some(slash) if admin_url[..slash].contains("//") && slash > admin_url.find("//").unwrap() + 1 => {
                let (base, rest) = admin_url.split_at(slash);
                let query = rest.find('?').map(|at| &rest[at..]).unwrap_or("");
                format!("{base}/{name}{query}")
            }
            _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
        };
        let dir = tempfile::tempdir().unwrap();
        Some(Self { url, data_dir: dir.path().to_path_buf(), admin_url: Some(admin_url), name, _dir: dir })
    }

    /// Every backend this machine can run: always SQLite, and PostgreSQL when configured.
    pub async fn all(test: &str) -> Vec<Self> {
        let mut databases = vec![Self::sqlite()];
        databases.extend(Self::postgres(test).await);
        databases
    }

    /// The store configuration for this database.
    pub fn config(&self) -> StoreConfig {
        StoreConfig { database_url: Some(self.url.clone()), ..StoreConfig::embedded(&self.data_dir) }
    }

    /// Opens and migrates a store on this database.
    pub async fn store(&self) -> EventStore {
        let store = EventStore::open(&self.config()).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        if self.admin_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        // Drop may run inside a runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin.execute(&*format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}
