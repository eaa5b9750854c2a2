//! Issue #13's benchmark: `GET /api/v1/catalog` for a member, with 200 blueprints of 20 ACL rules each, beside a
//! trivial actix handler measured in the same run; and the time from an ACL change's `204` to the member's catalog
//! showing it.
//!
//! Run: `cargo bench --bench catalog` (embedded SQLite); with
//! `GATEHOUSE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` also on PostgreSQL, in a database of
//! its own. `-- --quick` runs a short version. Results go to stdout as Markdown; docs/BENCHMARKS.md records them.
//!
//! Everything runs in this one process: the real service (`Application::build` on `127.0.0.1:0`), a trivial actix
//! server (actix's default worker count, as the service) and the load generator.

use std::time::{Duration, Instant};

use gatehouse::{Application, Settings};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use testkit::TestDb;

mod support;
use support::{percentile_ms, start_trivial};

const ADMIN: &str = "admin@example.com";
const MEMBER: &str = "ada@example.com";

#[derive(Debug, Clone, Copy)]
struct Plan {
    blueprints: usize,
    rules: usize,
    clients: usize,
    warm_up: Duration,
    window: Duration,
    rounds: usize,
    latency_samples: usize,
}

const FULL: Plan = Plan {
    blueprints: 200,
    rules: 20,
    clients: 16,
    warm_up: Duration::from_secs(1),
    window: Duration::from_secs(5),
    rounds: 2,
    latency_samples: 200,
};

const QUICK: Plan = Plan {
    blueprints: 200,
    rules: 20,
    clients: 16,
    warm_up: Duration::from_millis(500),
    window: Duration::from_secs(2),
    rounds: 1,
    latency_samples: 60,
};

/// [`support::drive`] with the plan's load.
async fn drive(url: &str, authorization: Option<&HeaderValue>, plan: &Plan) -> (f64, usize, Option<String>, f64, f64) {
    support::drive(url, authorization, plan.clients, plan.warm_up, plan.window).await
}

fn token(settings: &Settings, email: &str) -> HeaderValue {
    let issuer = api::auth::LocalIssuer::load_or_create(&settings.data_dir, &settings.auth_audience).expect("issuer");
    let token = issuer.issue(&domain::Email::parse(email).expect("email"), Duration::from_secs(3600)).expect("token");
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: String, auth: &HeaderValue, body: Value) -> u16 {
    let response =
        client.request(method, url).header(AUTHORIZATION, auth.clone()).json(&body).send().await.expect("sent");
    let status = response.status().as_u16();
    assert!(status < 300, "{status}: {}", response.text().await.unwrap_or_default());
    status
}

fn acl(rules: usize, with_member: bool) -> Value {
    let mut list: Vec<Value> =
        (0..rules - 1).map(|i| json!({"type": "domain", "value": format!("team{i}.example.org")})).collect();
    list.push(if with_member {
        json!({"type": "email", "value": MEMBER})
    } else {
        json!({"type": "email", "value": "nobody@example.org"})
    });
    json!({ "rules": list })
}

async fn catalog_has(client: &reqwest::Client, base: &str, auth: &HeaderValue, key: &str) -> bool {
    let response =
        client.get(format!("{base}/api/v1/catalog")).header(AUTHORIZATION, auth.clone()).send().await.expect("sent");
    let body: Value = response.json().await.expect("json");
    body["items"].as_array().expect("items").iter().any(|item| item["key"] == key)
}

async fn run(db: &TestDb, plan: Plan) -> String {
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        database_url: Some(db.url.clone()),
        data_dir: db.data_dir.clone(),
        bootstrap_admin: Some(ADMIN.into()),
        // The load generator is one member sending thousands of requests a second.
        rate_limit_api_per_minute: Some(0),
        ..Settings::default()
    };
    let application = Application::build(&settings).await.expect("the service starts");
    let base = format!("http://127.0.0.1:{}", application.port());
    let stopper = application.stopper();
    let running = tokio::spawn(application.run_until_stopped());
    let admin = token(&settings, ADMIN);
    let member = token(&settings, MEMBER);
    let client = reqwest::Client::new();
    call(
        &client,
        reqwest::Method::POST,
        format!("{base}/api/v1/members"),
        &admin,
        json!({"email": MEMBER, "role": "member"}),
    )
    .await;

    eprintln!("seeding {} blueprints of {} rules", plan.blueprints, plan.rules);
    for index in 0..plan.blueprints {
        let key = format!("bp-{index:03}");
        let registration = json!({"key": key, "display_name": format!("Blueprint {index}"),
            "description": "A benchmark blueprint with a description of ordinary length.",
            "source": {"kind": "local", "repository": "https://git.example.com/web.git", "branch": "main"}});
        call(&client, reqwest::Method::POST, format!("{base}/api/v1/blueprints"), &admin, registration).await;
        call(
            &client,
            reqwest::Method::PUT,
            format!("{base}/api/v1/blueprints/{key}/acl"),
            &admin,
            acl(plan.rules, index % 2 == 0),
        )
        .await;
        let state = if index % 10 == 9 { "testing" } else { "enabled" };
        if state == "enabled" {
            call(
                &client,
                reqwest::Method::PUT,
                format!("{base}/api/v1/blueprints/{key}/state"),
                &admin,
                json!({"state": state}),
            )
            .await;
        }
    }
    let visible = {
        let response = client
            .get(format!("{base}/api/v1/catalog"))
            .header(AUTHORIZATION, member.clone())
            .send()
            .await
            .expect("sent");
        let body: Value = response.json().await.expect("json");
        body["items"].as_array().expect("items").len()
    };

    let (trivial_base, trivial) = start_trivial();
    let mut out = String::new();
    out.push_str(&format!(
        "\n### {} ({} blueprints × {} rules; the member sees {visible})\n\n| Round | Trivial req/s | Catalog req/s | Ratio | Catalog p50 ms | p99 ms | Errors |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        db.backend(), plan.blueprints, plan.rules
    ));
    for round in 1..=plan.rounds {
        let (floor, ..) = drive(&format!("{trivial_base}/trivial"), None, &plan).await;
        let (rate, errors, first, p50, p99) = drive(&format!("{base}/api/v1/catalog"), Some(&member), &plan).await;
        if let Some(error) = first {
            eprintln!("first catalog error: {error}");
        }
        out.push_str(&format!(
            "| {round} | {floor:.0} | {rate:.0} | {:.2}× | {p50:.2} | {p99:.2} | {errors} |\n",
            rate / floor
        ));
    }

    // From an ACL change's 204 to the member's next catalog showing it: one change at a time, toggling the
    // member's own rule on an enabled blueprint, polling the catalog until it agrees.
    let mut delays = Vec::with_capacity(plan.latency_samples);
    let mut round_trips = Vec::with_capacity(plan.latency_samples);
    for sample in 0..plan.latency_samples {
        let index = (sample * 10) % plan.blueprints;
        let key = format!("bp-{index:03}");
        let shown = catalog_has(&client, &base, &member, &key).await;
        let began = Instant::now();
        call(
            &client,
            reqwest::Method::PUT,
            format!("{base}/api/v1/blueprints/{key}/acl"),
            &admin,
            acl(plan.rules, !shown),
        )
        .await;
        let changed = Instant::now();
        round_trips.push(changed - began);
        let deadline = changed + Duration::from_secs(5);
        loop {
            if catalog_has(&client, &base, &member, &key).await != shown {
                delays.push(changed.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "the catalog never showed the change to {key}");
        }
    }
    out.push_str(&format!(
        "\nACL change `204` → the member's catalog shows it ({} changes, one at a time, polling `GET /api/v1/catalog`): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (the `PUT` itself: p50 {:.2} ms).\n",
        delays.len(),
        percentile_ms(&delays, 0.5),
        percentile_ms(&delays, 0.99),
        percentile_ms(&delays, 1.0),
        percentile_ms(&round_trips, 0.5),
    ));
    trivial.stop(true).await;
    stopper.stop().await;
    let _ = running.await;
    out
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let plan = if quick { QUICK } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        println!("## Catalog (`cargo bench --bench catalog{}`)", if quick { " -- --quick" } else { "" });
        for db in TestDb::all("catalog benchmark").await {
            let report = run(&db, plan).await;
            println!("{report}");
        }
    });
}
