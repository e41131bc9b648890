//! Stamps the binary with its git revision (`--version`); the logic is shared with the other binary crate.

include!("../build-support/revision.rs");

fn main() {
    emit_revision();
}
