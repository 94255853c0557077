//! `embed_migrations!` reads `migrations/` at compile time: rebuild when a migration is added or changed (the
//! diesel_migrations documentation's advice), or a new migration would silently be left out of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
