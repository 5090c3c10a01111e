//! Shared by the integration tests: the one world of this test process.

use attach_tests::World;

/// The world every test in this binary shares (see [`World::shared`]).
pub fn world() -> &'static World {
    World::shared(env!("CARGO_BIN_EXE_attach-harness"))
}
