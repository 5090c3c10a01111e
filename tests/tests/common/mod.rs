//! Shared by the integration tests: the one world of this test process, and
//! the gateway config most tests start from.
#![allow(dead_code)] // each test binary uses its own subset

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_tests::World;
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::mock_model::MockModel;

/// The world every test in this binary shares (see [`World::shared`]).
pub fn world() -> &'static World {
    World::shared(env!("CARGO_BIN_EXE_attach-harness"))
}

/// A gateway config trusting the harness Keycloak's `attach` realm, in front
/// of `model`.
pub fn gateway_config(model: &MockModel) -> GatewayConfig {
    let kc = world().keycloak().expect("the world has Keycloak");
    let issuer = IssuerConfig::new(kc.issuer(REALM), vec![AUDIENCE.into()], Preset::Keycloak);
    let mut config = GatewayConfig::new(vec![issuer]);
    config.upstream.url = model.url();
    config
}
