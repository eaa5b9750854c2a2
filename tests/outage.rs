//! Store outages seen by clients of the real service: every request gets its answer within the acquire timeout
//! (plus a small margin), however many wait on one aggregate, and the service recovers by itself.
//!
//! PostgreSQL is taken away through a TCP proxy the test controls (`testkit::proxy`), never by stopping the
//! server other tests share. SQLite has no network; its outage is a database file locked by another connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, issue_token, Api, Server};
use testkit::proxy::{Mode, TcpProxy};
use testkit::TestDb;

/// `GATEHOUSE_DATABASE_ACQUIRE_TIMEOUT_SECS` in these tests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// What an answer may take beyond the acquire timeout (HTTP, scheduling on a busy machine).
const MARGIN: Duration = Duration::from_millis(1500);
/// Concurrent clients on one aggregate (the roster).
const CLIENTS: usize = 8;

fn start(db: &TestDb, database_url: &str) -> (Server, Api) {
    let timeout = ACQUIRE_TIMEOUT.as_secs().to_string();
    let server = Server::start(
        db,
        &[("GATEHOUSE_DATABASE_URL", database_url), ("GATEHOUSE_DATABASE_ACQUIRE_TIMEOUT_SECS", &timeout)],
    );
    let mut api = Api::new(&server);
    // A request that hangs fails the test instead of holding it.
    api.http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    (server, api)
}

/// `CLIENTS` concurrent invitations (one aggregate: the roster) with `/healthz` and `/readyz` asked alongside; every
/// invitation must be refused with 503 `store_unavailable` and a `Retry-After` within the acquire timeout plus the
/// margin, `/healthz` must answer 200 at once and `/readyz` within the same bound (with `readiness`, when given).
async fn refused_in_time(api: &Api, admin: &str, wave: &str, readiness: Option<u16>) {
    let limit = ACQUIRE_TIMEOUT + MARGIN;
    let invitations: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let api = api.clone();
            let admin = admin.to_string();
            let body = serde_json::json!({"email": format!("{wave}-{n}@example.com"), "role": "member"});
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = api.call(reqwest::Method::POST, "/api/v1/members", Some(&admin), Some(body)).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let probes: Vec<_> = [("/healthz", Some(200), MARGIN), ("/readyz", readiness, limit)]
        .into_iter()
        .map(|(path, expected, within)| {
            let api = api.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, _) = api.get(path, None).await;
                let elapsed = started.elapsed();
                if let Some(expected) = expected {
                    assert_eq!(status, expected, "{path}");
                }
                assert!(elapsed <= within, "{path} answered after {elapsed:?}");
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for invitation in invitations {
        let ((status, headers, problem), elapsed) = invitation.await.unwrap();
        times.push(elapsed);
        if status != 503 || problem["code"] != "store_unavailable" || !headers.contains_key("retry-after") {
            failures.push(format!("{status} {problem} after {elapsed:?}"));
        }
    }
    for probe in probes {
        probe.await.unwrap();
    }
    let shown: Vec<_> = times.iter().map(|time| format!("{:.2}s", time.as_secs_f64())).collect();
    eprintln!("{wave}: answers after {}", shown.join(", "));
    assert!(failures.is_empty(), "{wave}: not refused as unavailable: {failures:?}");
    let slowest = times.into_iter().max().unwrap();
    assert!(slowest <= limit, "{wave}: an answer took {slowest:?} (all: {shown:?}), more than {limit:?}");
}

/// Waves of concurrent refused requests until `length` has passed since `since`; how many waves.
async fn outage_for(
    api: &Api,
    admin: &str,
    name: &str,
    readiness: Option<u16>,
    since: Instant,
    length: Duration,
) -> usize {
    let mut waves = 0;
    while since.elapsed() < length {
        refused_in_time(api, admin, &format!("{name}{waves}"), readiness).await;
        waves += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    waves
}

/// Before the outage: one member invited, the read model caught up, and the admin's role cached at its latest
/// revision, so that requests during the outage go straight to their command (and queue on the roster's turn)
/// instead of failing on the read model first.
async fn settled(api: &Api, admin: &str) {
    assert_eq!(api.invite(admin, "before@example.com", "member").await.0, 201);
    let listed = eventually(Duration::from_secs(10), || async {
        api.member_emails(admin)
            .await
            .iter()
            .any(|(email, _, status)| email == "before@example.com" && status == "pending")
    })
    .await;
    assert!(listed, "the invitation never reached the read model");
    assert!(eventually(Duration::from_secs(10), || async { api.get("/readyz", None).await.0 == 200 }).await);
    // The admin is active in the read model; this request caches that at the current revision.
    assert_eq!(api.get("/api/v1/me", Some(admin)).await.0, 200);
}

/// After the outage: ready again, commands succeed, and nothing refused was recorded (each can be made now).
async fn recovered(api: &Api, admin: &str, refused: &[String]) {
    let ready = eventually(Duration::from_secs(60), || async { api.get("/readyz", None).await.0 == 200 }).await;
    assert!(ready, "never ready again");
    let members: Vec<_> = api.member_emails(admin).await.into_iter().map(|(email, _, _)| email).collect();
    assert!(members.contains(&"before@example.com".to_string()));
    for email in refused {
        assert!(!members.contains(email), "{email} was refused but recorded");
    }
    let invitations: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let api = api.clone();
            let admin = admin.to_string();
            tokio::spawn(async move { api.invite(&admin, &format!("after-{n}@example.com"), "member").await })
        })
        .collect();
    for invitation in invitations {
        let (status, body) = invitation.await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(api.invite(admin, &refused[0], "member").await.0, 201);
}

fn refused_emails(prefix: &str, waves: usize) -> Vec<String> {
    (0..waves).flat_map(|wave| (0..CLIENTS).map(move |n| format!("{prefix}{wave}-{n}@example.com"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn during_a_40_s_postgres_outage_8_concurrent_commands_on_one_aggregate_each_get_503_within_the_acquire_timeout()
{
    let Some(db) = TestDb::postgres("outage through a proxy").await else { return };
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let (proxy, url) = TcpProxy::for_postgres(&db.url).await;
    let (mut server, api) = start(&db, &url);
    settled(&api, &admin).await;

    // 25 s of network partition: connects hang, pooled connections stop answering mid-conversation.
    let outage = Instant::now();
    proxy.set(Mode::BlackHole);
    let holes = outage_for(&api, &admin, "hole", Some(503), outage, Duration::from_secs(25)).await;
    // Then 15 s of connections cut as soon as they are made (a load balancer in front of a database that is down).
    proxy.set(Mode::Refuse);
    let cuts = outage_for(&api, &admin, "cut", Some(503), outage, Duration::from_secs(40)).await;
    eprintln!("{holes} waves in the black hole, {cuts} while cut");
    assert!(holes >= 4 && cuts >= 2, "{holes} black-hole waves, {cuts} cut waves");
    assert_eq!(server.child.try_wait().unwrap(), None, "gatehouse exited during the outage");

    proxy.set(Mode::Pass);
    let mut refused = refused_emails("hole", holes);
    refused.extend(refused_emails("cut", cuts));
    recovered(&api, &admin, &refused).await;
    assert!(server.terminate().success());
}

/// SQLite's outage: another process holds the file's write lock (`BEGIN EXCLUSIVE`), so every write waits for
/// SQLite's busy timeout (10 s), longer than the acquire timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_sqlite_file_is_locked_8_concurrent_commands_on_one_aggregate_each_get_503_within_the_acquire_timeout(
) {
    use sqlx::{Connection, Executor};
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    // A member who has not signed in yet: their first request records it (a roster command) before its own.
    let newcomer = issue_token(&db, "newcomer@example.com", "admin", "1h");
    let (mut server, api) = start(&db, &db.url);
    settled(&api, &admin).await;

    let mut locker = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let since = Instant::now();
    // Reads go on in WAL mode, so readiness may stay on: `/readyz` only has to answer in time.
    let waves = outage_for(&api, &admin, "locked", None, since, Duration::from_secs(12)).await;
    // The newcomer's role is read (reads go on), recording the sign-in fails, and so does the request, at once:
    // not after a second acquire timeout for its own command.
    let started = Instant::now();
    let body = serde_json::json!({"email": "by-newcomer@example.com", "role": "member"});
    let (status, headers, problem) =
        api.call(reqwest::Method::POST, "/api/v1/members", Some(&newcomer), Some(body)).await;
    let elapsed = started.elapsed();
    assert_eq!((status, problem["code"].as_str()), (503, Some("store_unavailable")), "{problem}");
    assert!(headers.contains_key("retry-after"));
    assert!(elapsed <= ACQUIRE_TIMEOUT + MARGIN, "a newcomer's request took {elapsed:?}");
    // A request with an Idempotency-Key writes its claim first: that is refused in time too.
    let started = Instant::now();
    let response = api
        .http
        .post(format!("{}/api/v1/members", api.base))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "locked-keyed")
        .json(&serde_json::json!({"email": "keyed@example.com", "role": "member"}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(elapsed <= ACQUIRE_TIMEOUT + MARGIN, "a request with an Idempotency-Key took {elapsed:?}");
    assert_eq!(server.child.try_wait().unwrap(), None, "gatehouse exited during the outage");
    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();

    let mut refused = refused_emails("locked", waves);
    refused.extend(["by-newcomer@example.com".to_string(), "keyed@example.com".to_string()]);
    recovered(&api, &admin, &refused).await;
    assert_eq!(api.invite(&newcomer, "by-newcomer@example.com", "member").await.0, 201);
    assert!(server.terminate().success());
}
