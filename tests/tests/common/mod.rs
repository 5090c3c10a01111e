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

/// Installs the generated CRDs (once per test process; server-side apply,
/// so concurrent installs from other processes do not conflict) and waits
/// until the API server serves them.
pub fn install_crds() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
        let kubectl = |args: &[&str]| {
            let out = world()
                .kubectl()
                .expect("the world has a control plane")
                .args(args)
                .output()
                .expect("kubectl runs");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
        kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "-f",
            crds,
        ]);
    });
}
