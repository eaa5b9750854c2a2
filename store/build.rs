// The migrations are embedded by `sqlx::migrate!` at compile time; without this, adding a migration file does not
// rebuild the crate and a stale binary runs without the new tables.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
